"""The streaming data path: shards -> samples -> episode pools -> decoded episode batches."""
