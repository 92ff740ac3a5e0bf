"""Raw data sources, the demo generator and preprocessing."""
