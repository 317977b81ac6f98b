"""Calibration of the run's LLM decisions: the labelled sets (`sets`), the pure measures (`metrics`)."""
