"""The SolarDesk desktop app (PySide6): the only package of SolarDesk that imports Qt.

Start it with ``solardesk gui [PATHS]...`` (:func:`solardesk.gui.app.main`).
"""
