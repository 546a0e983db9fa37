"""KMS errors, and the one mapper to AWS JSON 1.1's error shape.

Every refusal is a KmsError whose ``code`` is the exception name botocore's KMS model uses, so botocore
raises the modelled class (``client.exceptions.NotFoundException`` …) from ``__type``:

    KmsError                                   400, unless the code says otherwise
    ├── ValidationError         ValidationException      input breaks a constraint of the model
    ├── SerializationError      SerializationException   the body is not the JSON the operation takes
    ├── UnsupportedOperation    UnsupportedOperationException
    ├── NotFound                NotFoundException
    ├── DisabledError           DisabledException
    ├── InvalidState            KMSInvalidStateException  wrong key state, or any XKS proxy failure on data
    ├── InvalidCiphertext       InvalidCiphertextException
    ├── IncorrectKey            IncorrectKeyException
    ├── KeyStoreNotFound        CustomKeyStoreNotFoundException
    ├── KeyStoreInvalidState    CustomKeyStoreInvalidStateException
    ├── InternalError           KMSInternalException (500): detail only in the log
    └── any other modelled name, e.g. KmsError("XksProxyUriInUseException", "..."), or one of the
        authentication errors of kms_emulator.callers (InvalidSignatureException, ...)
"""

from __future__ import annotations

from aiohttp import web

from xkslab_shared import json_body

CONTENT_TYPE = "application/x-amz-json-1.1"
REQUEST_ID_HEADER = "x-amzn-RequestId"

# The model's exception shapes (botocore kms 2014-11-01) plus the generic AWS JSON errors and the one
# name the XKS spec gives KMS that the model lacks. A name outside this set is a programming error.
KNOWN_CODES = frozenset(
    {
        "AlreadyExistsException",
        "CloudHsmClusterInUseException",
        "CloudHsmClusterInvalidConfigurationException",
        "CloudHsmClusterNotActiveException",
        "CloudHsmClusterNotFoundException",
        "CloudHsmClusterNotRelatedException",
        "ConflictException",
        "CustomKeyStoreHasCMKsException",
        "CustomKeyStoreInvalidStateException",
        "CustomKeyStoreNameInUseException",
        "CustomKeyStoreNotFoundException",
        "DependencyTimeoutException",
        "DisabledException",
        "DryRunOperationException",
        "ExpiredImportTokenException",
        "IncorrectKeyException",
        "IncorrectKeyMaterialException",
        "IncorrectTrustAnchorException",
        "InvalidAliasNameException",
        "InvalidArnException",
        "InvalidCiphertextException",
        "InvalidGrantIdException",
        "InvalidGrantTokenException",
        "InvalidImportTokenException",
        "InvalidKeyUsageException",
        "InvalidMarkerException",
        "KMSInternalException",
        "KMSInvalidMacException",
        "KMSInvalidSignatureException",
        "KMSInvalidStateException",
        "KeyUnavailableException",
        "LimitExceededException",
        "MalformedPolicyDocumentException",
        "NotFoundException",
        "TagException",
        "UnsupportedOperationException",
        "XksKeyAlreadyInUseException",
        "XksKeyInvalidConfigurationException",
        "XksKeyNotFoundException",
        "XksProxyIncorrectAuthenticationCredentialException",
        "XksProxyInvalidConfigurationException",
        "XksProxyInvalidResponseException",
        "XksProxyUriEndpointInUseException",
        "XksProxyUriInUseException",
        "XksProxyUriUnreachableException",
        "XksProxyVpcEndpointServiceInUseException",
        "XksProxyVpcEndpointServiceInvalidConfigurationException",
        "XksProxyVpcEndpointServiceNotFoundException",
        # Not modelled as shapes, but sent by AWS JSON services; botocore raises a plain ClientError.
        "ValidationException",
        "SerializationException",
        # The XKS spec's CreateKey mapping for a proxy's UnsupportedOperationException.
        "XksKeyInvalidResponseException",
        # Authentication, as AWS JSON services answer it (kms.verify_sigv4; all 400 on KMS).
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        # A connection refused past http.max_connections(_per_client), as AWS KMS answers throttling.
        "ThrottlingException",
    }
)
STATUS = {"KMSInternalException": 500}


class KmsError(Exception):
    code = "KMSInternalException"

    def __init__(self, message: str, code: str | None = None) -> None:
        if code is not None:
            if code not in KNOWN_CODES:
                raise ValueError(f"not a KMS exception name: {code}")
            self.code = code
        super().__init__(message)
        self.message = message

    @classmethod
    def named(cls, code: str, message: str) -> KmsError:
        """An error whose name is decided at run time (e.g. by the XKS client's error mapping)."""
        return cls(message, code)

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)


class ValidationError(KmsError):
    code = "ValidationException"


class SerializationError(KmsError):
    code = "SerializationException"


class UnsupportedOperation(KmsError):
    code = "UnsupportedOperationException"


class NotFound(KmsError):
    code = "NotFoundException"


class DisabledError(KmsError):
    code = "DisabledException"


class InvalidState(KmsError):
    code = "KMSInvalidStateException"


class InvalidCiphertext(KmsError):
    code = "InvalidCiphertextException"


class IncorrectKey(KmsError):
    code = "IncorrectKeyException"


class KeyStoreNotFound(KmsError):
    code = "CustomKeyStoreNotFoundException"


class KeyStoreInvalidState(KmsError):
    code = "CustomKeyStoreInvalidStateException"


class InternalError(KmsError):
    code = "KMSInternalException"


def error_response(error: KmsError, request_id: str) -> web.Response:
    """The only place a KmsError becomes bytes: ``{"__type": name, "message": text}``."""
    body = json_body.dumps({"__type": error.code, "message": error.message})
    response = web.Response(body=body, status=error.status)
    response.headers["Content-Type"] = CONTENT_TYPE
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
