"""PKCS#11 sealer: AES-256-GCM computed inside the token with a non-extractable key.

The sealing key never leaves the token (CKA_SENSITIVE, not CKA_EXTRACTABLE), so a copy of the SQL
database plus the host's files is not enough to unwrap the keyring. Verified against SoftHSM2 2.6.1:
CKM_AES_GCM works through python-pkcs11, so no wrap-mechanism fallback is needed and the blob
format is the same as the software sealer's: b"\\x01" || 12-byte nonce || ciphertext || 16-byte tag.

python-pkcs11 is imported lazily so the package (and the software sealer) work without the
'pkcs11' extra installed.

PKCS#11 login state belongs to the whole process per token, not to a session: a second C_Login is
refused with CKR_USER_ALREADY_LOGGED_IN (without checking the PIN) and C_Logout from any session
logs out all of them. Two sealers on one token (e.g. rewrapping from one key label to another)
therefore share one logged-in "anchor" session, reference counted below, and each sealer does its
work in a session of its own that never logs out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from dsm_emulator.sealing.base import PKCS11_MISSING, Pkcs11SealConfig, SealError

if TYPE_CHECKING:
    from pkcs11 import SecretKey, Session, Token
    from pkcs11.types import DecryptMixin, EncryptMixin

    class SealingKey(SecretKey, EncryptMixin, DecryptMixin):
        """An AES key that encrypts and decrypts, as _find_key checks. python-pkcs11 builds each
        object's class from mixins by its attributes at run time, so its declared SecretKey lacks
        encrypt and decrypt."""


__all__ = ["Pkcs11Sealer", "create_token_key"]

BLOB_VERSION = b"\x01"
NONCE_LEN = 12
TAG_LEN = 16
TAG_BITS = 128

_T = TypeVar("_T")


def _p11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise SealError(PKCS11_MISSING) from None
    return pkcs11


def _whole(output: bytes | Iterator[bytes]) -> bytes:
    """python-pkcs11's encrypt and decrypt answer bytes for bytes, chunks only for an iterator of them."""
    return bytes(output) if isinstance(output, bytes | bytearray) else b"".join(output)


class _StaleHandle(Exception):
    """The key handle no longer names our key (the library was re-initialised under us)."""


def _is_retryable(exc: BaseException) -> bool:
    """Errors after which a fresh session may succeed: the device or session went away.

    Deliberately excludes CKR_GENERAL_ERROR, which SoftHSM returns for a GCM tag mismatch.
    """
    if isinstance(exc, _StaleHandle):
        return True
    p11 = _p11()
    retryable = (
        p11.SessionHandleInvalid,
        p11.SessionClosed,
        p11.DeviceError,
        p11.DeviceRemoved,
        p11.TokenNotPresent,
        p11.TokenNotRecognised,
        p11.UserNotLoggedIn,
        p11.ObjectHandleInvalid,
        p11.KeyHandleInvalid,
    )
    if isinstance(exc, retryable):
        return True
    # python-pkcs11 maps CKR_CRYPTOKI_NOT_INITIALIZED to a bare PKCS11Error with this text.
    return type(exc) is p11.PKCS11Error and "not initialized" in str(exc)


def _describe(exc: BaseException) -> str:
    # Exception type names (PinIncorrect, SessionHandleInvalid, ...) are informative and cannot
    # carry secrets; python-pkcs11 messages are mostly empty anyway.
    return type(exc).__name__


def _close_quietly(session: Session | None) -> None:
    if session is None:
        return
    try:
        session.close()
    except Exception:  # noqa: S110 - the session is being discarded; it may already be gone
        pass


def _load_token(config: Pkcs11SealConfig) -> Token:
    p11 = _p11()
    try:
        lib = p11.lib(str(config.library))
    except p11.PKCS11Error as exc:
        raise SealError(f"cannot load PKCS#11 library {config.library} ({_describe(exc)})") from None
    try:
        token: Token = lib.get_token(token_label=config.token_label)
        return token
    except p11.NoSuchToken:
        raise SealError(f"PKCS#11 token {config.token_label!r} not found via {config.library}") from None
    except p11.MultipleTokensReturned:
        raise SealError(f"more than one PKCS#11 token is labelled {config.token_label!r}") from None
    except p11.PKCS11Error as exc:
        raise SealError(f"cannot reach PKCS#11 token {config.token_label!r} ({_describe(exc)})") from None


class _Login:
    """One logged-in anchor session per (library, token) shared by all sealers of this process."""

    __slots__ = ("anchor", "pin_digest", "refs")

    def __init__(self, anchor: Session, pin_digest: bytes) -> None:
        self.anchor = anchor
        self.pin_digest = pin_digest
        self.refs = 0


_LOGINS: dict[tuple[str, str], _Login] = {}
_LOGINS_LOCK = threading.RLock()
# Lets a second sealer on an already logged-in token check its PIN against the one the token
# accepted, without keeping that PIN around in a comparable form outside this process.
_PIN_KEY = secrets.token_bytes(32)


def _pin_digest(pin: str) -> bytes:
    return hmac.new(_PIN_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


def _login_key(config: Pkcs11SealConfig) -> tuple[str, str]:
    return (str(config.library), config.token_label)


def _anchor_alive(anchor: Session) -> bool:
    p11 = _p11()
    try:
        anchor.generate_random(64)
    except (p11.FunctionNotSupported, p11.RandomNoRNG):
        return True
    except p11.PKCS11Error:
        return False
    return True


def _login(config: Pkcs11SealConfig, token: Token) -> Session:
    p11 = _p11()
    label = config.token_label
    try:
        return token.open(rw=True, user_pin=config.pin)
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
        raise SealError(f"wrong PIN for PKCS#11 token {label!r}") from None
    except p11.PinLocked:
        raise SealError(f"the user PIN of PKCS#11 token {label!r} is locked") from None
    except p11.UserAlreadyLoggedIn:
        raise SealError(
            f"PKCS#11 token {label!r} is already logged in by code outside the sealer in this process; "
            "cannot verify the PIN"
        ) from None
    except p11.PKCS11Error as exc:
        raise SealError(f"cannot log in to PKCS#11 token {label!r} ({_describe(exc)})") from None


def _acquire(config: Pkcs11SealConfig) -> tuple[_Login, Session]:
    """Return the shared login for the token and a new working session under it."""
    p11 = _p11()
    key = _login_key(config)
    digest = _pin_digest(config.pin)
    with _LOGINS_LOCK:
        token = _load_token(config)
        login = _LOGINS.get(key)
        if login is not None and not _anchor_alive(login.anchor):
            del _LOGINS[key]
            _close_quietly(login.anchor)
            login = None
        if login is None:
            login = _Login(_login(config, token), digest)
            _LOGINS[key] = login
        elif not hmac.compare_digest(login.pin_digest, digest):
            raise SealError(f"wrong PIN for PKCS#11 token {config.token_label!r}")
        try:
            # No PIN: the session inherits the process-wide login, and closing it never logs out.
            session = token.open(rw=True)
        except p11.PKCS11Error as exc:
            if login.refs == 0:
                del _LOGINS[key]
                _close_quietly(login.anchor)
            raise SealError(
                f"cannot open a session on PKCS#11 token {config.token_label!r} ({_describe(exc)})"
            ) from None
        login.refs += 1
        return login, session


def _release(config: Pkcs11SealConfig, login: _Login, session: Session | None) -> None:
    key = _login_key(config)
    with _LOGINS_LOCK:
        _close_quietly(session)
        if _LOGINS.get(key) is login:
            login.refs -= 1
            if login.refs <= 0:
                del _LOGINS[key]
                _close_quietly(login.anchor)  # logs out of the token


def _find_key(session: Session, config: Pkcs11SealConfig) -> SealingKey:
    p11 = _p11()
    attr = p11.Attribute
    where = f"key {config.key_label!r} in PKCS#11 token {config.token_label!r}"
    try:
        found = list(
            session.get_objects(
                {
                    attr.CLASS: p11.ObjectClass.SECRET_KEY,
                    attr.KEY_TYPE: p11.KeyType.AES,
                    attr.LABEL: config.key_label,
                }
            )
        )
        if not found:
            raise SealError(f"no AES {where} (create it with create_sealing_key)")
        if len(found) > 1:
            raise SealError(f"more than one AES {where}")
        key = found[0]
        if key[attr.EXTRACTABLE] or not key[attr.SENSITIVE]:
            raise SealError(f"{where} is extractable or not sensitive; refusing to seal with it")
        if key[attr.VALUE_LEN] != 32:
            raise SealError(f"{where} is not an AES-256 key")
        if not (key[attr.ENCRYPT] and key[attr.DECRYPT]):
            raise SealError(f"{where} does not allow encrypt and decrypt")
    except p11.PKCS11Error as exc:
        raise SealError(f"cannot look up {where} ({_describe(exc)})") from None
    return cast("SealingKey", key)


class Pkcs11Sealer:
    """Seals with CKM_AES_GCM inside a PKCS#11 token, holding one session for its whole life.

    If the session or device fails (token reset, library re-initialised), the next call reopens
    the session once and retries; a second failure is reported. The library is not finalised on
    reopen because that would kill every other session in the process.
    """

    kind: str = "pkcs11"

    def __init__(self, config: Pkcs11SealConfig, login: _Login, session: Session, key: SealingKey) -> None:
        """Use Pkcs11Sealer.open(); this takes ownership of an already acquired login/session."""
        self.key_id: str = f"pkcs11:{config.token_label}/{config.key_label}"
        self._config = config
        self._login: _Login | None = login
        self._session: Session | None = session
        self._key: SealingKey | None = key
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: Pkcs11SealConfig) -> Pkcs11Sealer:
        login, session = _acquire(config)
        try:
            key = _find_key(session, config)
        except BaseException:
            _release(config, login, session)
            raise
        return cls(config, login, session, key)

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        params = self._gcm_params(nonce, aad)
        plaintext = bytes(plaintext)
        ciphertext = self._call(
            lambda key: key.encrypt(plaintext, mechanism=_p11().Mechanism.AES_GCM, mechanism_param=params),
            failure=f"wrap failed with sealer {self.key_id}",
        )
        return BLOB_VERSION + nonce + _whole(ciphertext)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        blob = bytes(blob)
        if not blob or blob[:1] != BLOB_VERSION:
            raise SealError("unknown sealed blob format version")
        if len(blob) < 1 + NONCE_LEN + TAG_LEN:
            raise SealError("sealed blob is truncated")
        nonce, ciphertext = blob[1 : 1 + NONCE_LEN], blob[1 + NONCE_LEN :]
        params = self._gcm_params(nonce, aad)
        plaintext = self._call(
            lambda key: key.decrypt(ciphertext, mechanism=_p11().Mechanism.AES_GCM, mechanism_param=params),
            # SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR, so the cause cannot be narrowed.
            failure=f"unwrap failed with sealer {self.key_id}: wrong key, tampered blob or wrong aad",
        )
        return _whole(plaintext)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._login is not None:
                _release(self._config, self._login, self._session)
            self._login = self._session = self._key = None

    def __enter__(self) -> Pkcs11Sealer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Pkcs11Sealer {self.key_id}>"

    @staticmethod
    def _gcm_params(nonce: bytes, aad: bytes) -> Any:
        return _p11().GCMParams(nonce, bytes(aad), TAG_BITS)

    def _call(self, op: Callable[[SealingKey], _T], failure: str) -> _T:
        p11 = _p11()
        with self._lock:
            if self._closed:
                raise SealError("sealer is closed")
            if self._key is None:  # an earlier reopen failed; this call gets its one attempt now
                self._reopen()
            try:
                return self._checked(op)
            except _StaleHandle:
                pass
            except p11.PKCS11Error as exc:
                if not _is_retryable(exc):
                    raise SealError(f"{failure} ({_describe(exc)})") from None
            self._reopen()
            try:
                return self._checked(op)
            except _StaleHandle:
                raise SealError(f"sealer {self.key_id}: key handle still stale after reopening") from None
            except p11.PKCS11Error as exc:
                if _is_retryable(exc):
                    raise SealError(
                        f"PKCS#11 token {self._config.token_label!r} failed again after reopening "
                        f"({_describe(exc)})"
                    ) from None
                raise SealError(f"{failure} ({_describe(exc)})") from None

    def _checked(self, op: Callable[[SealingKey], _T]) -> _T:
        # One attribute read per call (sealing is rare) guards against the handle having been
        # recycled for another object after someone else finalised and re-initialised the library.
        key = self._key
        assert key is not None
        if key[_p11().Attribute.LABEL] != self._config.key_label:
            raise _StaleHandle
        return op(key)

    def _reopen(self) -> None:
        if self._login is not None:
            _release(self._config, self._login, self._session)
        self._login = self._session = self._key = None
        login, session = _acquire(self._config)
        try:
            key = _find_key(session, self._config)
        except BaseException:
            _release(self._config, login, session)
            raise
        self._login, self._session, self._key = login, session, key


def create_token_key(config: Pkcs11SealConfig) -> None:
    """Generate the sealing key inside the token, never extractable, refusing to shadow one.

    A second key with the same label would make lookups ambiguous and could strand terms wrapped
    under the first, so an existing secret key with the label is an error, not a no-op.
    """
    p11 = _p11()
    attr = p11.Attribute
    where = f"key {config.key_label!r} in PKCS#11 token {config.token_label!r}"
    login, session = _acquire(config)
    try:
        existing = list(
            session.get_objects({attr.CLASS: p11.ObjectClass.SECRET_KEY, attr.LABEL: config.key_label})
        )
        if existing:
            raise SealError(f"{where} already exists; refusing to create another")
        session.generate_key(
            p11.KeyType.AES,
            256,
            label=config.key_label,
            store=True,
            capabilities=p11.MechanismFlag.ENCRYPT | p11.MechanismFlag.DECRYPT,
            template={
                attr.TOKEN: True,
                attr.PRIVATE: True,
                attr.SENSITIVE: True,
                attr.EXTRACTABLE: False,
                attr.ENCRYPT: True,
                attr.DECRYPT: True,
                attr.WRAP: False,
                attr.UNWRAP: False,
                attr.SIGN: False,
                attr.VERIFY: False,
                attr.DERIVE: False,
                attr.LABEL: config.key_label,
            },
        )
    except p11.PKCS11Error as exc:
        raise SealError(f"cannot create {where} ({_describe(exc)})") from None
    finally:
        _release(config, login, session)
