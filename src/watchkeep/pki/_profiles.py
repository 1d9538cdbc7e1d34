"""Role profiles: what a certificate of each kind of server must contain (pure).

A server certificate names its host as subject CN and as SAN DNS names (cert.hostname),
is issued for server authentication, plus client authentication for the servers that
also dial out with it (cert.server_auth): every server that runs a watchkeep process
proves who it is on the management link with its certificate (mutual TLS).

The certificate roles are the server roles of the site (:class:`watchkeep.site.ServerRole`)
and ``event``, a role for the certificates of event servers and integrations that watchkeep
issues but does not run. A server's certificate has the role of the same name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from watchkeep.errors import InvalidChoice
from watchkeep.site import ServerRole

__all__ = ["KeyType", "PrivateKey", "Profile", "Role", "generate_key", "key_type_of", "profile_for"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class Role(enum.StrEnum):
    """The role a certificate is issued for; it selects the certificate's profile."""

    MANAGEMENT = "management"
    RECORDING = "recording"
    FAILOVER = "failover"
    MOBILE = "mobile"
    EVENT = "event"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text)
        except ValueError:
            raise InvalidChoice("role", text, [r.value for r in cls]) from None

    @classmethod
    def of_server(cls, role: ServerRole) -> Role:
        """The role of the certificates a server of ``role`` is issued."""
        return cls(role.value)


class KeyType(enum.StrEnum):
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    ECDSA_P256 = "ecdsa-p256"

    @classmethod
    def parse(cls, text: str) -> KeyType:
        try:
            return cls(text)
        except ValueError:
            raise InvalidChoice("key type", text, [k.value for k in cls]) from None


def generate_key(key_type: KeyType) -> PrivateKey:
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    bits = 2048 if key_type is KeyType.RSA_2048 else 3072
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_type_of(public_key: object) -> KeyType:
    """The key type of a public key, or refuse keys outside the policy (tls.policy)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size == 2048:
            return KeyType.RSA_2048
        if public_key.key_size == 3072:
            return KeyType.RSA_3072
        raise InvalidChoice("RSA key size", str(public_key.key_size), ["2048", "3072"])
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return KeyType.ECDSA_P256
    raise InvalidChoice("key type", type(public_key).__name__, [k.value for k in KeyType])


@dataclass(frozen=True)
class Profile:
    role: Role
    extended_key_usages: tuple[ObjectIdentifier, ...]

    @property
    def client_auth(self) -> bool:
        return ExtendedKeyUsageOID.CLIENT_AUTH in self.extended_key_usages


_SERVER = (ExtendedKeyUsageOID.SERVER_AUTH,)
_SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)

_PROFILES = {
    Role.MANAGEMENT: Profile(Role.MANAGEMENT, _SERVER_AND_CLIENT),
    Role.RECORDING: Profile(Role.RECORDING, _SERVER_AND_CLIENT),
    # A failover server stands in for a recording server, so it must be able to do all a
    # recording server does, including dialling the management server (site.failover_prepared).
    Role.FAILOVER: Profile(Role.FAILOVER, _SERVER_AND_CLIENT),
    # A mobile server registers with the management server like the others, and must prove
    # its name there: a registration key alone speaks for no server (issue: a heartbeat that
    # claimed role "mobile" skipped the certificate check).
    Role.MOBILE: Profile(Role.MOBILE, _SERVER_AND_CLIENT),
    Role.EVENT: Profile(Role.EVENT, _SERVER),
}


def profile_for(role: Role | ServerRole) -> Profile:
    """The profile of certificates of ``role``, or of the certificates a server of ``role``
    is issued."""
    return _PROFILES[role if isinstance(role, Role) else Role.of_server(role)]
