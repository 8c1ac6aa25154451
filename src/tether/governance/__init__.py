"""Governance: access reviews, right-sizing and compliance reports over the ledger."""
