"""Policy: Cedar schema and policies, versions, validation, the decision engine, simulation."""
