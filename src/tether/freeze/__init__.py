"""Freezes: the incident switch that stops every matching agent at once, revoking nothing."""
