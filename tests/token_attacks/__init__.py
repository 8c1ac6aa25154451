"""The attack suite: every case is an attack on Tether's OAuth 2 surface, and every case
asserts that the attack is refused — and, where it applies, that nothing was issued or
changed and that the failure was audited without the secret.

Layers exercised, named in each section:

* HTTP: ``POST /oauth/token``, ``/oauth/introspect``, ``/oauth/revoke`` in-process
  (Starlette TestClient on ``create_app(services)``), form-encoded as RFC 6749 §3.2 wants.
* SERVICE: ``services.oauth.token(form, None, dpop=[...])`` and friends — the DPoP cases at
  the token endpoint run at both layers, and a few defence-in-depth cases pin what the
  service itself must refuse whatever the route in front of it checks.
* SDK: ``tether.sdk.verify_access_token`` and ``TetherAuthMiddleware`` on a small resource
  server (``JWKSCache.from_static(services.signing_keys.jwks())``).

One module per attack family; the deployments and helpers they share are in
``tests.token_attacks.kit`` and the fixtures in this package's ``conftest.py``.

Every case runs on SQLite and on PostgreSQL. Cases touch only agents, credentials and
tokens they create themselves, so they share one deployment per backend (``env``, package
scope, frozen clock); the few that move the clock get a deployment of their own (``fresh``).
"""
