"""Human approval of agent actions: pending requests and how approvers are told about them."""
