"""OpenAI request shapes and error objects.

Unknown fields are accepted (clients send many); known fields of the wrong type
or out of range are a 400 naming the field, never a 500.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_TOKENS_DEFAULT = 16
_M = TypeVar("_M", bound=BaseModel)


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        }


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Lenient):
    include_usage: bool = False


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return " ".join(p.text or "" for p in self.content)


PositiveTokens = Annotated[int, Field(ge=1, le=1_000_000)]


class _Sampling(_Lenient):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveTokens | None = None
    max_completion_tokens: PositiveTokens | None = None

    def token_budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or MAX_TOKENS_DEFAULT

    def prompt_text(self) -> str:
        return "\n".join(f"{m.role}: {m.text()}" for m in self.messages)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    max_tokens: PositiveTokens | None = None

    def token_budget(self) -> int:
        return self.max_tokens or MAX_TOKENS_DEFAULT

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        return " ".join(str(p) for p in self.prompt)


def count_tokens(text: str) -> int:
    """About four characters a token, like the usual BPE rule of thumb; at least one."""
    return max(1, math.ceil(len(text) / 4))


def parse_body(raw: bytes, model: type[_M]) -> _M:
    try:
        data = json.loads(raw.decode("utf-8"))
        # a lone surrogate ("\ud800") parses, but no UTF-8 text can carry it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeError as e:  # UnicodeDecodeError or UnicodeEncodeError: both say why
        reason = e.reason if isinstance(e, UnicodeDecodeError | UnicodeEncodeError) else str(e)
        raise OpenAIError(400, f"Request body is not valid UTF-8 text: {reason}") from None
    except RecursionError:
        raise OpenAIError(400, "Request body is nested too deeply.") from None
    except ValueError as e:  # JSONDecodeError, an integer of thousands of digits
        raise OpenAIError(400, f"Request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "Request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except RecursionError:
        raise OpenAIError(400, "Request body is nested too deeply.") from None
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise OpenAIError(400, f"Invalid value for '{param}': {err['msg']}", param=param) from None
