"""The example site's app: the Employee profile filled by the sync, and the pages."""
