"""The docks of the main window, one per step of the pipeline (and plugins, messages)."""
