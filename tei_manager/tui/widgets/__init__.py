"""Widgets of the dashboard: each renders one kind of data it is handed and fetches nothing."""
