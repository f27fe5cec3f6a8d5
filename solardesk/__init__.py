"""SolarDesk: map solar panels on aerial and satellite imagery without hand-made labels."""

__version__ = "0.1.0"
