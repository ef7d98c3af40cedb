"""Request and response bodies: pydantic models whose descriptions make /docs useful.

`CompletionRequest` and the completion responses follow OpenAI's legacy completions API
(a token is one character, or one byte for a byte-vocabulary model), so OpenAI clients
work unchanged; `GenerateRequest` is charnet's own, simpler endpoint. Requests are
strict (no "1" for 1, no true for 1), so a wrong type is a 400 naming the field.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from charnet.generation import MAX_LOGPROBS

MAX_SEED = (1 << 63) - 1
MAX_STOPS = 16
MAX_N = 128

Stop = Optional[Union[str, list[str]]]


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do, so clients that send
    # extras (user, metadata...) still work.
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send one more chunk before `[DONE]` with the usage of the "
                                                   "whole request and an empty `choices`.")


class CompletionRequest(_Request):
    """OpenAI legacy completions request (`POST /v1/completions`)."""

    model: str = Field(description="Model to use: a name from `GET /v1/models` (the checkpoint's directory name).")
    prompt: Union[str, list[str]] = Field(
        "", description="Text to continue, or a list of texts (each gets `n` choices). Empty starts a new document.")
    max_tokens: Optional[int] = Field(16, ge=0, description="Characters to generate at most (bytes for a "
                                                            "byte-vocabulary model); capped by the server's "
                                                            "--max-chars-cap.")
    temperature: Optional[float] = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: Optional[float] = Field(1.0, gt=0, le=1, description="Nucleus sampling mass in (0, 1]; 1 is off.")
    n: Optional[int] = Field(1, ge=1, le=MAX_N, description="Choices per prompt; choice i uses seed + i.")
    stop: Stop = Field(None, description=f"Up to {MAX_STOPS} strings; generation ends before the first one "
                                         "appears, which is not returned.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Seed of the draws: the same seed gives the "
                                                                     "same text. Random when omitted.")
    stream: Optional[bool] = Field(False, description="Stream `text/event-stream` chunks (`data: {...}`), "
                                                      "ending with `data: [DONE]`.")
    stream_options: Optional[StreamOptions] = Field(None, description="Streaming options.")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description="Return each character's log-probability and this many most "
                                                "likely alternatives (the sampled one is always included).")
    echo: Optional[bool] = Field(False, description="Return the prompt before the completion.")
    top_k: Optional[int] = Field(None, ge=0, description="charnet extra: sample among the k most likely "
                                                         "characters only; 0 is off.")
    repetition_penalty: Optional[float] = Field(None, gt=0, description="charnet extra: above 1 discourages the "
                                                                        "characters of the last 64; 1 is off.")
    # Accepted for compatibility; values other than the neutral one are refused (400).
    best_of: Optional[int] = Field(None, ge=1, description="Only the default (equal to n) is supported.")
    frequency_penalty: Optional[float] = Field(None, description="Not supported except 0; use "
                                                                 "repetition_penalty.")
    presence_penalty: Optional[float] = Field(None, description="Not supported except 0; use repetition_penalty.")
    logit_bias: Optional[dict[str, float]] = Field(None, description="Not supported except empty.")
    suffix: Optional[str] = Field(None, description="Not supported except empty.")
    user: Optional[str] = Field(None, description="Ignored.")


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs object: one entry per generated character."""

    tokens: list[str] = Field(description="The characters, in order.")
    token_logprobs: list[Optional[float]] = Field(description="Natural log-probability of each character under "
                                                              "the model (before temperature, top-k, top-p); "
                                                              "null for echoed prompt characters.")
    top_logprobs: list[Optional[dict[str, float]]] = Field(description="The most likely characters at each "
                                                                       "position and their log-probabilities.")
    text_offset: list[int] = Field(description="Offset of each character in the choice's text.")


class CompletionChoice(BaseModel):
    index: int = Field(description="Prompt index times n plus the choice's index within its prompt.")
    text: str = Field(description="Generated text (after the prompt when echo is set).")
    logprobs: Optional[CompletionLogprobs] = Field(None, description="When logprobs was asked for.")
    finish_reason: Optional[Literal["stop", "length"]] = Field(
        description="`stop`: a stop string appeared; `length`: max_tokens reached; null until the last chunk "
                    "of a stream.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Characters in the prompts (each prompt counted once).")
    completion_tokens: int = Field(description="Characters generated, in all choices.")
    total_tokens: int = Field(description="The sum of both.")


class CompletionResponse(BaseModel):
    """A completion, or one chunk of a streamed one (same shape; `usage` only at the end)."""

    id: str = Field(description="`cmpl-` and a random hex string, the same in every chunk.")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(description="Unix time the request was received.")
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class GenerateRequest(_Request):
    """charnet's native request (`POST /v1/generate`)."""

    model: Optional[str] = Field(None, description="Model name; may be omitted when the server has one model.")
    prompt: str = Field("", description="Text to continue; empty starts a new document.")
    length: int = Field(256, ge=0, description="Characters to generate at most (capped by --max-chars-cap).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely characters only; 0 is off.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass in (0, 1]; 1 is off.")
    repetition_penalty: float = Field(1.0, gt=0, description="Above 1 discourages recent characters; 1 is off.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Seed; random when omitted (returned).")
    stop: Stop = Field(None, description="Strings that end generation (not returned).")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS,
                                    description="Per-character log-probabilities with this many alternatives.")
    stream: bool = Field(False, description="Stream events: Server-Sent Events by default, newline-delimited "
                                            "JSON with `Accept: application/x-ndjson`.")


class CharLogprobOut(BaseModel):
    text: str = Field(description="The character.")
    logprob: float = Field(description="Its natural log-probability under the model.")
    top: list[tuple[str, float]] = Field(description="The most likely characters there, most likely first.")


class GenerateResponse(BaseModel):
    """The whole generation, or the last event of a stream (`text` then holds only the
    last piece)."""

    model: str
    text: str = Field(description="Generated text (without the prompt or a stop string).")
    finish_reason: Optional[Literal["stop", "length"]] = Field(description="Null until the last stream event.")
    seed: int = Field(description="The seed used: send it again for the same text.")
    prompt_chars: int = Field(description="Tokens in the prompt.")
    generated_chars: int = Field(description="Tokens generated so far.")
    logprobs: Optional[list[CharLogprobOut]] = None


class ScoreRequest(_Request):
    """Text to score (`POST /v1/score`)."""

    model: Optional[str] = Field(None, description="Model name; may be omitted when the server has one model.")
    text: str = Field(description="Text to score from the model's initial state, as `charnet eval` scores a file "
                                  "(at most the server's --max-score-chars characters).")
    top: int = Field(5, ge=0, le=MAX_LOGPROBS, description="Most likely alternatives to return at each position.")


class CharScore(BaseModel):
    text: str = Field(description="The character (for a byte-vocabulary model, the byte as `display` shows it).")
    logprob: Optional[float] = Field(description="Natural log-probability the model gave it; null for the first, "
                                                 "which has nothing before it to be predicted from.")
    top: list[tuple[str, float]] = Field(description="The most likely characters there, most likely first.")
    unknown: bool = Field(False, description="Outside the model's vocabulary (scored as its unknown character).")


class ScoreResponse(BaseModel):
    """How well the model predicts the text, in total and character by character."""

    model: str
    bits_per_char: Optional[float] = Field(description="Mean surprisal in bits per character (per byte for a "
                                                       "byte-vocabulary model), as `charnet eval` reports; null "
                                                       "when fewer than two characters leave nothing to score.")
    tokens: int = Field(description="Characters scored: all but the first.")
    unknown: int = Field(description="Characters outside the model's vocabulary (scored as the unknown one).")
    chars: list[CharScore] = Field(description="Every character of the text, in order.")


class ModelCard(BaseModel):
    """One served model, as OpenAI lists them, with charnet's own metadata."""

    id: str = Field(description="The name to use as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the checkpoint was written.")
    owned_by: str = "charnet"
    charnet: dict = Field(description="cell, layers, hidden, embedding, parameters, vocab_size, tokenizer, "
                                      "val_bits_per_char, state_bytes.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, naming the field at fault.")
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, "
                                  "rate_limit_error, timeout_error or server_error.")
    param: Optional[str] = Field(None, description="The request field at fault, if one is.")
    code: Optional[str] = Field(None, description="A machine-readable code, if any.")


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


class Health(BaseModel):
    status: str
    models: list[str] = Field(default_factory=list, description="Models served (on /ready).")
    pid: int = Field(description="The answering process: tells replicas and workers apart.")
