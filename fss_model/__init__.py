"""fss_model package."""
