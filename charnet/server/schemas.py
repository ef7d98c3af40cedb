"""Request bodies: pydantic models whose descriptions make /docs useful, and which
convert themselves into engine requests.

`CompletionRequest` follows OpenAI's legacy completions API (a token is one character, or
one byte for a byte-vocabulary model), so OpenAI clients work unchanged; `GenerateRequest`
is charnet's own, simpler endpoint. Their responses are in `charnet.server.responses`. Requests are
strict (no "1" for 1, no true for 1), so a wrong type is a 400 naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, WithJsonSchema, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from charnet.config import MAX_VOCAB
from charnet.errors import ConfigError
from charnet.inference.constraints import KINDS, MAX_SPEC_CHARS
from charnet.inference.sampling import MAX_BIAS, MAX_BIASED, MAX_PENALTY, SamplingParams
from charnet.inference.request import MAX_CHARS, MAX_LOGPROBS, GenerationRequest, lone_surrogate
from charnet.server.errors import APIError
from charnet.tokenizer import Vocab
from charnet.server.settings import MAX_N
from charnet.inference.stops import MAX_STOP_CHARS, MAX_STOPS

MAX_SEED = (1 << 53) - 1
"""The largest seed over HTTP: the largest integer every JSON parser reads exactly (a
float64 cannot tell 2^63 - 1 from 2^63), and so one a JavaScript client can send back."""

TOKEN_ID = r"^[0-9]{1,7}$"
Bias = Annotated[float, Field(ge=-MAX_BIAS, le=MAX_BIAS)]
IdBias = Annotated[dict[Annotated[str, Field(pattern=TOKEN_ID)], Bias], WithJsonSchema({
    # pydantic writes a key pattern as patternProperties, which leaves other keys allowed.
    "type": "object", "propertyNames": {"pattern": TOKEN_ID}, "maxProperties": MAX_BIASED,
    "additionalProperties": {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS}})]
"""OpenAI's logit_bias: token ids (decimal strings, as JSON keys must be) -> bias."""

StopText = Field(min_length=1, max_length=MAX_STOP_CHARS)
Stop = Optional[Union[Annotated[str, StopText], Annotated[list[Annotated[str, StopText]], Field(max_length=MAX_STOPS)]]]


def limit(**bounds: str) -> dict[str, Any]:
    """Mark a field as bounded by the server's settings (or, for ``vocab_size``, by the
    model's vocabulary): its ``value``, its ``length`` in characters (of each string, for
    a list), or its number of ``items``, each named by the setting that bounds it. The
    mark appears in /openapi.json as ``x-charnet-limit``, where the server also fills in
    the bounds it applies (`charnet.server.openapi`); `_Request.check_limits` enforces
    them."""
    return {"x-charnet-limit": bounds}


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do, so clients that send
    # extras (user, metadata...) still work.
    model_config = ConfigDict(strict=True, extra="ignore")
    _entries: int = PrivateAttr(0)

    @property
    def response_entries(self) -> int:
        """The most token entries its response may hold (`response_budget`), once it has
        been checked against the server's limits."""
        return self._entries

    @field_validator("*", mode="before")
    @classmethod
    def _integral_floats(cls, value: Any) -> Any:
        # JSON Schema counts 1.0 as an integer, and so does this server; 1.5 stays a float,
        # refused where an integer is wanted.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @model_validator(mode="after")
    def _valid_unicode(self) -> _Request:
        # JSON can spell a lone surrogate ("\ud800"); such text cannot be written back
        # out as UTF-8, so it is refused where it enters, naming the field.
        errors = [InitErrorDetails(type=PydanticCustomError("invalid_unicode", "is not valid Unicode: a lone "
                                                            "surrogate at index {index}", {"index": at}),
                                   loc=loc, input=text)
                  for loc, text in _strings(self) if (at := lone_surrogate(text)) is not None]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def check_limits(self, limits: Mapping[str, int]) -> None:
        """400 for a field past a bound `limit` marked it with (`limits`: setting -> bound).
        A default past its bound takes the bound instead: the server's own limit is what
        a client that did not choose gets."""
        for name, of, setting in self.limited_fields():
            value = getattr(self, name)
            if of == "value" and name not in self.model_fields_set and value is not None:
                setattr(self, name, min(value, limits[setting]))
            elif value is not None:
                _check(name, value, of, limits[setting], setting)

    @classmethod
    @functools.cache
    def limited_fields(cls) -> tuple[tuple[str, str, str], ...]:
        """(field, what of it is bounded, the setting bounding it) for every field `limit`
        marked; read from the fields once per class, not on every request."""
        return tuple((name, of, setting) for name, info in cls.model_fields.items()
                     for of, setting in ((info.json_schema_extra or {}).get("x-charnet-limit") or {}).items())


def _check(name: str, value: Any, of: str, bound: int, setting: str) -> None:
    option = "the model's vocabulary size" if setting == "vocab_size" else "--" + setting.replace("_", "-")
    if of == "value" and value > bound:
        raise APIError(400, f"{name}: {value} is above this server's limit of {bound} ({option})", param=name,
                       code=f"{name}_too_large")
    if of == "items" and isinstance(value, list) and len(value) > bound:
        raise APIError(400, f"{name}: {len(value)} items is above this server's limit of {bound} ({option})",
                       param=name, code=f"{name}_too_many")
    longest = max(map(len, [value] if isinstance(value, str) else value), default=0) if of == "length" else 0
    if longest > bound:
        raise APIError(400, f"{name}: {longest:,} characters is above this server's limit of {bound:,} ({option})",
                       param=name, code=f"{name}_too_long")


_SCALARS = frozenset((bool, int, float))


def _strings(model: BaseModel, prefix: tuple = ()):
    """(location, text) of every string a request holds, nested models, lists and dict keys too."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if value is None or type(value) in _SCALARS:  # most fields: nothing to look into
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
        if isinstance(value, str):
            yield (*prefix, name), value
        elif isinstance(value, BaseModel):
            yield from _strings(value, (*prefix, name))
        elif items is not None:
            for key, item in items:
                for text in (key, item) if isinstance(value, dict) else (item,):
                    if isinstance(text, str):
                        yield (*prefix, name, key), text


def response_budget(choices: int, lengths: list[int], logprobs: int | None, budget: int, fields: str) -> int:
    """The most token entries the response a request asks for may hold: `choices` per
    entry of `lengths` (each the tokens one choice may return), times 1 + the
    alternatives per token; a 400 unless it fits the server's budget. Checked before
    any work, so a 100-byte request cannot ask for a 100 MB answer."""
    size = choices * sum(lengths) * (1 + (logprobs or 0))
    if size > budget:
        raise APIError(400, f"{fields} = {size:,} tokens of response, above this server's limit of {budget:,} "
                            "(--max-response-tokens); ask for fewer", code="response_budget_exceeded")
    return size


def _engine_request(prompt: str, names: Mapping[str, str], vocab: Vocab, **settings: Any) -> GenerationRequest:
    """A `GenerationRequest` validated, against the model's vocabulary too; a 400 naming
    the field as the client spelled it."""
    try:
        return GenerationRequest.of(prompt, **{k: v for k, v in settings.items() if v is not None}).for_vocab(vocab)
    except ConfigError as e:
        param = names.get(e.field, e.field)
        raise APIError(400, f"{param}: {e.message}", param=param, code="invalid_value") from None


def _exactly_one(schema: dict[str, Any]) -> None:
    schema.update(minProperties=1, maxProperties=1)
    for prop in schema["properties"].values():
        prop.pop("default", None)  # absent, never null


class StructuredOutputs(_Request):
    """vLLM's `structured_outputs`: exactly one of these (an absent one is not null)."""

    # Exactly one, as JSON Schema says it: one property, none of them nullable; and unlike
    # the requests around it, nothing else (vLLM's other options are not supported).
    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema: _exactly_one(schema))

    regex: str = Field(None, max_length=MAX_SPEC_CHARS, description="A regular expression (Rust regex syntax) the "
                       "whole text must match.")
    json_: Union[dict[str, Any], str] = Field(None, alias="json", description="A JSON Schema the text must be an "
                                              "instance of (an object, or its JSON text).")
    grammar: str = Field(None, max_length=MAX_SPEC_CHARS, description="A context-free grammar, in Lark or GBNF "
                         "syntax.")
    choice: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = Field(
        None, description="The text is one of these strings.")
    json_object: Literal[True] = Field(None, description="true: any JSON object.")

    def model_dump(self, **kw: Any) -> dict[str, Any]:
        return super().model_dump(by_alias=True, **kw)


class JsonSchemaFormat(_Request):
    name: Optional[str] = Field(None, description="A name for the schema (not used).")
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema.")
    strict: Optional[bool] = Field(None, description="Always strict here: the output matches the schema.")
    description: Optional[str] = Field(None, description="Not used.")


class ResponseFormat(_Request):
    """OpenAI's `response_format`."""

    type: Literal["text", "json_object", "json_schema"] = Field(description="What the output must be.")
    json_schema: Optional[JsonSchemaFormat] = Field(None, description="With type json_schema: the schema.")


class _Decoding(_Request):
    """What both generation endpoints share: the sampling controls, each the
    `SamplingParams` field of the same name (its docstring is the reference; null or
    omitted takes that field's default), and the constraint, in vLLM's or OpenAI's form."""

    temperature: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="Sampling temperature; 0 is "
                                         "greedy. Default 1.")
    top_k: Optional[int] = Field(None, ge=0, le=MAX_VOCAB, description="Sample among the k most likely characters "
                                 "only, at most the model's vocabulary size; 0 (the default) is off.",
                                 json_schema_extra=limit(value="vocab_size"))
    top_p: Optional[float] = Field(None, gt=0, le=1, description="Nucleus sampling mass in (0, 1]; 1 (the default) "
                                                                 "is off.")
    min_p: Optional[float] = Field(None, ge=0, le=1, description="Sample only among characters at least this "
                                   "fraction as likely as the most likely one; 0 (the default) is off.")
    typical_p: Optional[float] = Field(None, gt=0, le=1, description="Locally typical sampling: keep the "
                                       "characters closest to the expected surprisal, as many as reach this mass; 1 "
                                       "(the default) is off.")
    repetition_penalty: Optional[float] = Field(None, gt=0, allow_inf_nan=False,
                                                description="Above 1 discourages the characters of the last 64; 1 "
                                                            "(the default) is off.")
    frequency_penalty: Optional[float] = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY,
                                               description="OpenAI's: subtracted from a character's logit once per "
                                                           "time it has been generated; 0 (the default) is off.")
    presence_penalty: Optional[float] = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY,
                                              description="OpenAI's: subtracted from the logit of every character "
                                                          "generated at least once; 0 (the default) is off.")
    logit_bias: Optional[IdBias] = Field(
        None, max_length=MAX_BIASED, description="OpenAI's: token id (a character's id, as `GET /v1/models` lists "
                                                 "them) -> bias added to its logit, in [-100, 100]; -100 bans it, "
                                                 "100 forces it.")
    char_bias: Optional[dict[Annotated[str, Field(min_length=1, max_length=1)], Bias]] = Field(
        None, max_length=MAX_BIASED, description="charnet extra: `logit_bias` keyed by the characters themselves.")
    structured_outputs: Optional[StructuredOutputs] = Field(
        None, description="vLLM's: constrain the text to a regex, a JSON Schema, a grammar or a list of choices.")
    response_format: Optional[ResponseFormat] = Field(
        None, description="OpenAI's: `json_object` (any JSON object) or `json_schema` (one matching "
                          "`json_schema.schema`); `text` is unconstrained.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Seed of the draws: the same seed gives the "
                                                                     "same text. Random when omitted (returned).")

    @model_validator(mode="after")
    def _one_constraint(self) -> _Decoding:
        if self.structured_outputs is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise APIError(400, "structured_outputs and response_format both constrain the output; give one",
                           param="response_format", code="conflicting_constraints")
        return self

    def sampling(self) -> dict[str, Any]:
        """The sampling settings this request sets, by `SamplingParams` field name."""
        out = {name: value for name in _SAMPLING if (value := getattr(self, name, None)) is not None}
        bias = {int(k): v for k, v in (self.logit_bias or {}).items()} | dict(self.char_bias or {})
        if bias:
            out["logit_bias"] = bias
        return out

    def constraint(self) -> dict[str, Any]:
        """The ``constraint`` setting, if the request sets one."""
        if self.structured_outputs is not None:
            return {"constraint": self.structured_outputs.model_dump(exclude_none=True)}
        if self.response_format is not None and self.response_format.type != "text":
            if self.response_format.type == "json_object":
                return {"constraint": {"json_object": True}}
            if self.response_format.json_schema is None:
                raise APIError(400, "response_format.json_schema: required when type is json_schema",
                               param="response_format.json_schema", code="invalid_value")
            return {"constraint": {"json": self.response_format.json_schema.schema_}}
        return {}

    def field_names(self) -> dict[str, str]:
        """Engine setting -> the request field a client knows it by (for 400s)."""
        if self.structured_outputs is not None:
            named = {kind: f"structured_outputs.{kind}" for kind in KINDS}
        else:
            named = {"json": "response_format.json_schema"}
        return named | {"constraint": "structured_outputs", "logit_bias": "logit_bias" if self.logit_bias
                        else "char_bias"}


_SAMPLING = tuple(f.name for f in dataclasses.fields(SamplingParams) if f.name != "logit_bias")


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send one more chunk before `[DONE]` with the usage of the "
                                                   "whole request and an empty `choices`.")


class CompletionRequest(_Decoding):
    """OpenAI legacy completions request (`POST /v1/completions`). OpenAI's `best_of` is
    not supported: a request that sets it to anything but n is refused."""

    @model_validator(mode="before")
    @classmethod
    def _no_best_of(cls, data: Any) -> Any:
        # Not a field: the schema cannot say "equal to n", and best_of is no choice here.
        if isinstance(data, dict) and data.get("best_of") not in (None, data.get("n") or 1):
            raise APIError(400, "best_of: not supported (it may only equal n)", param="best_of",
                           code="best_of_unsupported")
        return data

    model: str = Field(description="Model to use: a name from `GET /v1/models` (the checkpoint's directory name).")
    prompt: Union[str, Annotated[list[str], Field(min_length=1)]] = Field(
        "", description="Text to continue, or a list of texts (each gets `n` choices; at most --max-n of them). "
                        "Empty starts a new document. At most --max-prompt-chars characters each.",
        json_schema_extra=limit(length="max_prompt_chars", items="max_n"))
    max_tokens: Optional[int] = Field(16, ge=0, le=MAX_CHARS, description="Characters to generate at most (bytes "
                                      "for a byte-vocabulary model); at most the server's --max-chars-cap.",
                                      json_schema_extra=limit(value="max_chars_cap"))
    n: Optional[int] = Field(1, ge=1, le=MAX_N, description="Choices per prompt; choice i uses seed + i. At most "
                             "the server's --max-n.", json_schema_extra=limit(value="max_n"))
    stop: Stop = Field(None, description=f"Up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters; "
                                         "generation ends before the first one appears, which is not returned.")
    stream: Optional[bool] = Field(False, description="Stream `text/event-stream` chunks (`data: {...}`), "
                                                      "ending with `data: [DONE]`.")
    stream_options: Optional[StreamOptions] = Field(None, description="Streaming options.")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description="Return each character's log-probability and this many most "
                                                "likely alternatives (the sampled one is always included). The "
                                                "response may hold at most --max-response-tokens entries: "
                                                "choices x (echoed prompt + max_tokens) x (1 + logprobs).")
    echo: Optional[bool] = Field(False, description="Return the prompt before the completion.")
    # Accepted for compatibility, with only their neutral values (the schema says which).
    suffix: Optional[str] = Field(None, max_length=0, description="Only empty is supported (insertion needs a "
                                                                  "bidirectional model).")
    user: Optional[str] = Field(None, description="Ignored.")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def engine_groups(self, limits: Mapping[str, int], budget: int,
                      vocab: Vocab) -> list[tuple[GenerationRequest, int]]:
        """The (request, n) groups to generate, one per prompt; a 400 for anything the
        server refuses."""
        self.check_limits(limits)
        n = self.n or 1
        prompts = self.prompts()
        max_tokens = min(16, limits["max_chars_cap"]) if self.max_tokens is None else self.max_tokens
        self._entries = response_budget(n, [max_tokens + (len(p) if self.echo else 0) for p in prompts], self.logprobs,
                                        budget, "n x (echoed prompt + max_tokens) x (1 + logprobs), over the prompts,")
        return [(_engine_request(p, {"max_chars": "max_tokens", **self.field_names()}, vocab, max_chars=max_tokens,
                                 stop=self.stop, logprobs=self.logprobs, **self.sampling(), **self.constraint()), n)
                for p in prompts]


class GenerateRequest(_Decoding):
    """charnet's native request (`POST /v1/generate`)."""

    model: Optional[str] = Field(None, description="Model name; may be omitted when the server has one model.")
    prompt: str = Field("", description="Text to continue; empty starts a new document. At most "
                                        "--max-prompt-chars characters.",
                        json_schema_extra=limit(length="max_prompt_chars"))
    length: int = Field(256, ge=0, le=MAX_CHARS, description="Characters to generate at most (at most the server's "
                        "--max-chars-cap).", json_schema_extra=limit(value="max_chars_cap"))
    stop: Stop = Field(None, description=f"Up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters that end "
                                         "generation (not returned).")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description="Per-character log-probabilities with this many alternatives; "
                                                "length x (1 + logprobs) at most --max-response-tokens.")
    stream: bool = Field(False, description="Stream events: Server-Sent Events by default, newline-delimited "
                                            "JSON with `Accept: application/x-ndjson`.")

    def engine_request(self, limits: Mapping[str, int], budget: int, vocab: Vocab) -> GenerationRequest:
        """The request to generate; a 400 for anything the server refuses."""
        self.check_limits(limits)
        self._entries = response_budget(1, [self.length], self.logprobs, budget, "length x (1 + logprobs)")
        return _engine_request(self.prompt, {"max_chars": "length", **self.field_names()}, vocab, max_chars=self.length,
                               stop=self.stop, logprobs=self.logprobs, **self.sampling(), **self.constraint())


class ScoreRequest(_Request):
    """Text to score (`POST /v1/score`)."""

    model: Optional[str] = Field(None, description="Model name; may be omitted when the server has one model.")
    text: str = Field(description="Text to score from the model's initial state, as `charnet eval` scores a file "
                                  "(at most the server's --max-score-chars characters; characters x (1 + top) at "
                                  "most --max-response-tokens).", json_schema_extra=limit(length="max_score_chars"))
    top: int = Field(5, ge=0, le=MAX_LOGPROBS, description="Most likely alternatives to return at each position.")

    def check(self, limits: Mapping[str, int], budget: int) -> None:
        """A 400 for anything the server refuses."""
        self.check_limits(limits)
        self._entries = response_budget(1, [len(self.text)], self.top, budget, "text characters x (1 + top)")
