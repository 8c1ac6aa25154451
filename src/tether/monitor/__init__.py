"""Continuous monitoring: behaviour windows per agent, risk rules, sequence-aware context."""
