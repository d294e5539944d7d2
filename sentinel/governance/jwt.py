"""Local JWT verification (PyJWT): HMAC with a shared secret, RSA/EC/EdDSA keys from a JWKS URL.

The original sent every new token to Zion's `/users/me`; verifying locally needs no call per token.
The token's `alg` picks the key family and never the other way round: HS* only with the secret,
asymmetric algorithms only with JWKS keys (symmetric JWKS keys are ignored), `none` never. So a
public key can never be used as an HMAC secret. The JWKS is cached, refreshed once older than
`max_age` (however small), and refetched when a token names an unknown `kid`, at most once per
`refetch_interval` after a fetch. After a failed fetch none is tried for up to 5 s. While a refresh
is under way a token whose key is cached is verified with it, not held up; while refetches fail the
cached set is still used, but never once it was fetched more than `max_stale` ago: a key the
identity provider removed must not stay valid for as long as its JWKS URL is unreachable. Past that,
every JWKS-signed token is GovernanceUnavailable (503), as with no set at all. Keys that share a
`kid` (a rotation that kept it) are each tried, in the set's order, up to MAX_KEYS_PER_KID.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import jwt
import orjson

from sentinel.domain.identity import Identity, external_id_of
from sentinel.errors import GovernanceUnavailable
from sentinel.governance.identity import IdentitySource, NotYetValid, Refused, StandIn
from sentinel.providers.http import read_capped

log = logging.getLogger("sentinel.jwt")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# Key type (JWK `kty`) each asymmetric algorithm needs.
KEY_ALGORITHMS = {
    **{f"RS{n}": "RSA" for n in (256, 384, 512)},
    **{f"PS{n}": "RSA" for n in (256, 384, 512)},
    **{f"ES{n}": "EC" for n in (256, 384, 512)},
    "EdDSA": "OKP",
}
# Clock skew allowed on `exp`/`nbf`/`iat`: the one figure both verification and every cache of a
# JWT identity use (an identity is served until `exp + LEEWAY_SECONDS`, never longer).
LEEWAY_SECONDS = 30
MAX_JWKS_BYTES = 1024 * 1024  # a key set is a few KiB: a larger document is refused unread
# Keys of one `kid` a token is tried against (the first in the set's order): a rotation that kept the
# kid has two or three; a 1 MiB set could hold thousands, each a signature check per token.
MAX_KEYS_PER_KID = 4


# The latest `exp` taken as it is (9999-12-31T23:59:59Z): a later one means the same, "far away",
# an earlier one than its negative the same, "long ago"; and an integer of hundreds of digits (either
# sign: an unverified token is anyone's) must not overflow a float.
MAX_EXP = 253_402_300_799


def expiry_of(exp: object) -> float | None:
    """`exp + LEEWAY_SECONDS` for an `exp` claim, within ±MAX_EXP; None unless it is a number."""
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp != exp:  # exp != exp: NaN
        return None
    return float(max(min(exp, MAX_EXP), -MAX_EXP)) + LEEWAY_SECONDS


def canonical_encoding(token: str) -> bool:
    """Whether each `.`-separated segment of a JWT-shaped token is canonical unpadded base64url (RFC
    7515 §2: no `=`, no `+`/`/`, no other character, zero trailing bits); True for a token without a
    `.` (an opaque one: not ours to judge). PyJWT takes `sig=`, `+` for `-`, and trailing bits set,
    so one signed token had many spellings that verify: each its own identity-cache entry and its own
    Zion `/users/me` lookup, and one user's token multiplied into as many lookups as spellings."""
    if "." not in token:
        return True
    for segment in token.split("."):
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError):  # ValueError: a character outside ASCII
            return False
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
            return False
    return True


def unverified_expiry(token: str) -> float | None:
    """`exp + LEEWAY_SECONDS` read from a JWT *without* verifying it, None when it has none (or is
    not a JWT). Only ever use it to shorten a lifetime or to refuse: it proves nothing else."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    return expiry_of(claims.get("exp") if isinstance(claims, dict) else None)


class JwtVerifier:
    """Verifies signature, `exp`/`nbf`/`iat` (30 s leeway), and `aud`/`iss` when configured.

    `session` is needed with `jwks_url` (the app's pooled session; the verifier does not close it).
    `clock` (monotonic) times the key set's fetches; `wall_clock` (Unix) is what every time claim
    (`exp`, `nbf`, `iat`) is read against, PyJWT's own `time.time()` never: a token signed but
    not yet valid raises `NotYetValid` rather than being None.
    """

    def __init__(
        self,
        secret: str | None,
        jwks_url: str | None,
        audience: str | None,
        issuer: str | None,
        session: aiohttp.ClientSession | None = None,
        *,
        refetch_interval: float = 60.0,
        max_age: float = 3600.0,
        max_stale: float = 86400.0,
        fetch_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret and not jwks_url:
            raise ValueError("JWT verification needs a secret or a JWKS URL")
        if jwks_url and session is None:
            raise ValueError("a JWKS URL needs an HTTP session")
        if max_stale < max_age:
            raise ValueError("a key set cannot be refused as stale before it is due for a refresh")
        if secret and len(secret.encode()) < 32:
            log.warning("JWT_SECRET is shorter than 32 bytes; HMAC tokens are easier to forge")
        self._secret = secret.encode() if secret else None
        self._jwks_url = jwks_url
        self._audience = audience
        self._issuer = issuer
        self._session = session
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._max_stale = max_stale
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout)
        self._clock = clock
        self._wall_clock = wall_clock
        self._keys: list[tuple[str | None, jwt.PyJWK]] | None = None  # (the JWK's own `alg`, key)
        self._fetched_at = 0.0
        self._retry_at = 0.0  # after a failed fetch, no fetch before this (monotonic)
        self._lock = asyncio.Lock()
        self.fetches = 0  # JWKS downloads attempted (for tests and metrics)

    async def verify(self, token: str) -> dict[str, Any] | None:
        """The token's claims, or None when it is not valid. GovernanceUnavailable when the JWKS is
        needed but cannot be fetched and none is cached, or only one fetched over `max_stale` ago;
        NotYetValid when it is valid but for its `nbf`, still ahead beyond the leeway.
        A token not in canonical encoding (`canonical_encoding`) is not valid."""
        if not canonical_encoding(token):
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str):
            return None  # PyJWT does not check its type: a list or an object would not even hash
        key: Any
        if alg in HMAC_ALGORITHMS and self._secret is not None:
            key = self._secret
        elif alg in KEY_ALGORITHMS and self._jwks_url is not None:
            return await self._verify_with_jwks(token, alg, kid if isinstance(kid, str) else None)
        else:
            return None  # "none", unknown algorithms, and families we hold no key for
        try:
            return self._decode(token, key, alg)
        except (jwt.PyJWTError, ValueError, TypeError):
            return None

    async def _verify_with_jwks(self, token: str, alg: str, kid: str | None) -> dict[str, Any] | None:
        """Try every key of the token's kid (a rotation that kept the kid, old and new key both in the
        set, refused the tokens of whichever came second). When none of them signed it, the set is
        fetched again as for an unknown kid (at most once per `refetch_interval`): the new key of a
        rotation that replaced the old one under the same kid is not in the cached set."""
        claims, unsigned = self._decode_any(token, await self._jwks(alg, kid), alg)
        if unsigned and kid is not None:
            fetched_at = self._fetched_at
            await self._refresh()  # which fetches only when allowed
            if self._fetched_at != fetched_at:
                claims, _ = self._decode_any(token, self._find(alg, kid), alg)
        return claims

    def _decode_any(self, token: str, keys: list[jwt.PyJWK], alg: str) -> tuple[dict[str, Any] | None, bool]:
        """The claims of the first of `keys` that verifies the token, and whether each of them found
        its signature wrong (none: False)."""
        unsigned = bool(keys)
        for found in keys:
            try:
                return self._decode(token, found.key, alg), False
            except jwt.InvalidSignatureError:
                continue
            except (jwt.PyJWTError, ValueError, TypeError):
                unsigned = False
        return None, unsigned

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        """The token's verified claims; PyJWTError (or ValueError, TypeError) when it is not valid."""
        # `exp`, `nbf` and `iat` are read here, on `wall_clock`, once all else holds (signature first):
        # `_in_time`. PyJWT's own checks read `time.time()`, another clock than the gateway's.
        options: dict[str, Any] = {"require": ["exp"], "verify_aud": self._audience is not None,
                                   "verify_exp": False, "verify_nbf": False, "verify_iat": False}
        with warnings.catch_warnings():  # short keys are warned about once, at start-up
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options=options,  # type: ignore[arg-type]
            )
        self._in_time(claims)
        return claims

    def _in_time(self, claims: dict[str, Any]) -> None:
        """Check `exp`, `nbf` and `iat` as PyJWT would, on `wall_clock` with LEEWAY_SECONDS (each an
        integer: DecodeError otherwise). An `exp` at or before now less the leeway is
        ExpiredSignatureError, a refusal (cached as any); an `nbf` or `iat` beyond the leeway ahead is
        NotYetValid — a verdict for now only, not to be cached (PyJWT's ImmatureSignatureError was a
        refusal like any other, remembered 30 s). `exp` first: a token past it is never valid again."""
        now = self._wall_clock()
        if _integer(claims, "exp") <= now - LEEWAY_SECONDS:  # `exp` is required (present, not null)
            raise jwt.ExpiredSignatureError("Signature has expired")
        for name in ("nbf", "iat"):
            if name in claims and _integer(claims, name) > now + LEEWAY_SECONDS:
                raise NotYetValid(f"The token is not yet valid ({name})")

    async def _jwks(self, alg: str, kid: str | None) -> list[jwt.PyJWK]:
        """The JWKS keys this token may be signed with (none: refused), fetching the set when missing,
        old, or the kid is unknown; GovernanceUnavailable without a set fetched within `max_stale`."""
        now = self._clock()
        keys = self._find(alg, kid)
        stale = self._keys is None or now - self._fetched_at > self._max_age
        # A token whose key is cached does not wait for a refresh under way (a slow or unreachable
        # JWKS URL held every new token up to `fetch_timeout`, again at each retry): it is verified
        # with the cached key meanwhile, as when that refresh fails, while within `max_stale`.
        meanwhile = self._lock.locked() and now - self._fetched_at <= self._max_stale
        if not keys or (stale and not meanwhile):
            await self._refresh()  # which fetches only when allowed
            keys = self._find(alg, kid)
        if self._keys is None:
            raise GovernanceUnavailable("the JWT key set (JWKS) cannot be fetched")
        if self._clock() - self._fetched_at > self._max_stale:
            raise GovernanceUnavailable("the JWT key set (JWKS) cannot be refetched and the cached one is too old")
        return keys

    def _find(self, alg: str, kid: str | None) -> list[jwt.PyJWK]:
        usable = [
            key
            for declared, key in self._keys or []
            if key.key_type == KEY_ALGORITHMS[alg] and declared in (None, alg)
        ]
        if kid is not None:
            return [k for k in usable if k.key_id == kid][:MAX_KEYS_PER_KID]
        return usable if len(usable) == 1 else []  # no kid: only an unambiguous key will do

    async def _refresh(self) -> None:
        """Fetch the set when it is due: none yet, or older than `max_age` (whatever
        `refetch_interval` says: a `max_age` below it was not refreshed in time, and a `max_stale`
        below it made a reachable JWKS an outage), or else (a token named an unknown `kid`) fetched
        `refetch_interval` ago. Never within 5 s of a failure. Decided under the lock: of the tasks
        that found the set due, the first fetches and the others find it fresh."""
        async with self._lock:
            now = self._clock()
            if now < self._retry_at:  # a fetch failed moments ago
                return
            due = self._keys is None or now - self._fetched_at > self._max_age
            if not due and now < self._fetched_at + self._refetch_interval:  # fetched recently
                return
            self.fetches += 1
            try:
                keys = await self._download()
            except GovernanceUnavailable:
                self._retry_at = self._clock() + min(5.0, self._refetch_interval)
                log.warning("JWKS fetch failed; %s", "keeping the cached keys (until max_stale)" if self._keys else "no keys")
                return
            self._keys, self._fetched_at = keys, self._clock()

    async def _download(self) -> list[tuple[str | None, jwt.PyJWK]]:
        assert self._session is not None and self._jwks_url is not None
        try:
            # Not redirected, not compressed (the app's session does not inflate), at most 1 MiB.
            async with self._session.get(
                self._jwks_url, timeout=self._timeout, allow_redirects=False, headers={"Accept-Encoding": "identity"}
            ) as resp:
                if resp.status != 200:
                    raise GovernanceUnavailable(f"JWKS answered {resp.status}")
                raw = await read_capped(resp, MAX_JWKS_BYTES)
            if raw is None:
                raise GovernanceUnavailable(f"JWKS document larger than {MAX_JWKS_BYTES} bytes")
            document = orjson.loads(raw)
        except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
            raise GovernanceUnavailable(f"JWKS unreachable: {type(exc).__name__}") from exc
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise GovernanceUnavailable("JWKS document has no key list")
        keys = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                continue
            try:
                keys.append((entry.get("alg"), jwt.PyJWK(entry)))
            # Not only PyJWTError: PyJWK raises NotImplementedError for `"alg": "none"` and TypeError
            # for an `alg` that is not a string; one key must not make the whole set a 500.
            except (jwt.PyJWTError, NotImplementedError, TypeError, ValueError):
                log.warning("skipping an unusable JWKS key (kid %r)", entry.get("kid"))
        if not keys:  # a set that verifies nothing is a broken answer, not a rotation: the cached keys stay
            raise GovernanceUnavailable("JWKS document has no usable signing key")
        kids = Counter(key.key_id for _, key in keys if isinstance(key.key_id, str))
        if crowded := sorted(kid for kid, count in kids.items() if count > MAX_KEYS_PER_KID)[:3]:
            log.warning("JWKS kid(s) %s have more than %d keys: tokens are tried against the first %d only",
                        ", ".join(repr(kid[:64]) for kid in crowded), MAX_KEYS_PER_KID, MAX_KEYS_PER_KID)
        return keys


class LocalJwtIdentitySource:
    """IdentitySource from locally verified JWT claims: no governance call per new token.

    Without a `profile_source` the claims are the identity: `external_id` = claim `externalId`, else
    `external_id` (a number taken as its text; another type refuses the token: `_id_claim`), else
    `sub`; `user_id` = `sub`; `email` = `email`; `expires_at` = `exp + LEEWAY_SECONDS`
    (so no cache serves it past the token's life).

    With a `profile_source` (Zion's `/users/me`) every verified token is checked with it too, and the
    identity is always the profile's when it answers (`externalId`, else Zion's id; the earlier of the
    two expiries): that is the id Zion's limits are read by, and the one a user's objects, sessions and
    ledger rows are keyed by whether or not the token carries an email. A refusal is `Refused` (401,
    and no stand-in for that token until it expires: see below). Only
    while the source is unreachable (GovernanceUnavailable) may a token be served from its claims, and
    only when they name the profile's id explicitly (`externalId` or `external_id`, a number taken as
    its text, as Zion's is) and carry the email usage is reported by: that identity is raised as a
    `StandIn` (the outage, carrying it), never returned as if the profile had vouched for it, so no
    cache keeps it as a confirmed identity. Any other is the outage (503).
    """

    name = "jwt"

    def __init__(self, verifier: JwtVerifier, profile_source: IdentitySource | None = None) -> None:
        self.verifier = verifier
        self.profile_source = profile_source

    async def authenticate(self, token: str) -> Identity | None:
        claims = await self.verifier.verify(token)
        if claims is None:
            return None
        expires_at = expiry_of(claims["exp"])  # `exp` is required and verified
        if expires_at is None:
            return None
        if self.profile_source is None:
            named, external_id = _id_claim(claims)
            if not named:
                external_id = _text(claims.get("sub"))
            return self._from_claims(claims, external_id, expires_at) if external_id is not None else None
        try:
            profile = await self.profile_source.authenticate(token)
        except GovernanceUnavailable as exc:
            stand_in = self._outage_identity(claims, expires_at)
            if stand_in is None:
                raise
            raise StandIn(
                "identity source unavailable; the token's claims name its identity", stand_in,
                retry_after=exc.retry_after,
            ) from exc
        if profile is None:  # the source's verdict on a token that names its identity: no stand-in later
            raise Refused(expires_at)
        return replace(profile, expires_at=min(expires_at, profile.expires_at or expires_at))

    def _outage_identity(self, claims: dict[str, Any], expires_at: float) -> Identity | None:
        """The identity the profile would give, from claims that name it (explicit external id and
        email), or None: `sub` is not the profile's id, and a guess would key the user apart."""
        _, external_id = _id_claim(claims)
        if external_id is None or _text(claims.get("email")) is None:
            return None
        return self._from_claims(claims, external_id, expires_at)

    def _from_claims(self, claims: dict[str, Any], external_id: str, expires_at: float) -> Identity:
        return Identity(
            external_id=external_id,
            user_id=_text(claims.get("sub")) or external_id,
            email=_text(claims.get("email")),
            source=self.name,
            expires_at=expires_at,  # no `plan`: a token's claims never choose it (the database's or Zion's is read)
        )


def _integer(claims: dict[str, Any], name: str) -> int:
    """A time claim as PyJWT reads it (`int()` of it: `"123"` and `1.5` are taken); DecodeError when
    it is none (a list, NaN, infinity)."""
    try:
        return int(claims[name])
    except (ValueError, TypeError, OverflowError):
        raise jwt.DecodeError(f"The {name} claim must be an integer.") from None


def _id_claim(claims: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether the claims name their user explicitly — `externalId`, else `external_id`, present and
    neither null nor "" — and that id as Zion's profile reads it (`external_id_of`: a number is its
    text), None when it cannot be read (a list, an object, a boolean, 0). Such a claim never gives way
    to `sub`, another id space: `{"externalId": 42, "sub": "alice"}` was served as `alice`, whoever
    she is, on her plan and her count."""
    for name in ("externalId", "external_id"):
        value = claims.get(name)
        if value is not None and value != "":
            return True, external_id_of(value)
    return False, None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
