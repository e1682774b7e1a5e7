"""A JWT issuer made at test time (RS256, Debian's python3-jwt and python3-cryptography): its
public key as the inline JWKS of a RequestAuthentication, and the tokens it signs. Shared by the
waypoint tests and the demo."""

import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class Issuer:
    def __init__(self, issuer, kid="k1", **defaults):
        """`defaults` are claims every token carries unless token() overrides them."""
        self.issuer = issuer
        self.kid = kid
        self.defaults = defaults
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=kid, alg="RS256", use="sig")
        self.jwks = json.dumps({"keys": [jwk]}, separators=(",", ":"))

    def token(self, now=None, lifetime=600, **claims):
        """A token of this issuer: iat a minute before `now` (default: the clock), exp `lifetime`
        seconds after it (negative: already expired), then the defaults and `claims`."""
        now = int(time.time()) if now is None else now
        payload = {"iss": self.issuer, "iat": now - 60, "exp": now + lifetime}
        payload.update(self.defaults)
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


# JWT rules attached to the waypoint `backend/waypoint`, for audience "api", with the key set
# inline: a template for str.format(issuer=..., jwks=Issuer.jwks).
WAYPOINT_REQUEST_AUTHN = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: backend
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  jwtRules:
  - issuer: "{issuer}"
    audiences: ["api"]
    jwks: '{jwks}'
    outputClaimToHeaders:
    - header: x-jwt-group
      claim: group
"""
