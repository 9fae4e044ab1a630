"""TEI's error model, so clients of text-embeddings-inference parse our failures unchanged.

TEIError (JSON body {"error", "error_type"}; the OpenAI route renders {"message", "code", "type"})
 ├── ValidationError   422  bad arguments, too many inputs, input too long
 ├── TokenizerError    422  the tokenizer rejected an input
 ├── EmptyError        400  nothing to process
 ├── OverloadedError   429  no admission permit free
 ├── BackendError      424  the model cannot do this, or its forward pass failed
 └── UnhealthyError    503  the last forward pass failed

BodyError (plain-text body, like axum's Json extractor and body limit): malformed JSON 400,
wrong content type 415, JSON of the wrong shape 422, body over --payload-limit 413.
"""

from __future__ import annotations


class TEIError(Exception):
    """An error TEI reports as JSON; ``metric`` is its te_request_failure ``err`` label."""

    status: int = 500
    error_type: str = "Backend"
    metric: str = "inference"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(TEIError):
    status = 422
    error_type = "Validation"
    metric = "validation"

    def __init__(self, message: str, *, metric: str = "validation", prefix: bool = True) -> None:
        # TEI prefixes the messages of input checks, but not of the batch-size check.
        super().__init__(f"Input validation error: {message}" if prefix else message)
        self.metric = metric


class TokenizerError(TEIError):
    status = 422
    error_type = "Tokenizer"
    metric = "tokenization"

    def __init__(self, message: str) -> None:
        super().__init__(f"tokenizer error {message}")


class EmptyError(TEIError):
    status = 400
    error_type = "Empty"
    metric = "validation"


class OverloadedError(TEIError):
    status = 429
    error_type = "Overloaded"
    metric = "overloaded"

    def __init__(self, message: str = "Model is overloaded") -> None:
        super().__init__(message)


class BackendError(TEIError):
    status = 424
    error_type = "Backend"
    metric = "inference"

    def __init__(self, message: str, *, metric: str = "inference") -> None:
        super().__init__(f"Backend error: {message}")
        self.metric = metric


class UnhealthyError(TEIError):
    status = 503
    error_type = "Unhealthy"
    metric = "inference"

    def __init__(self, message: str = "unhealthy") -> None:
        super().__init__(message)


class BodyError(Exception):
    """A request body rejected before it reaches a handler; TEI answers these in plain text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StartupError(Exception):
    """The worker cannot start with this model and these flags; the message says what to change."""
