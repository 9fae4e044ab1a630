"""Screens: overview, apply (profile, plan, progress), instance detail, and the modals."""
