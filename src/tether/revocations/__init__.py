"""The revocation feed: what resource servers that verify tokens offline must stop honouring."""
