"""What both frameworks share: data pipeline, config and flags, reporting, the weight file."""
