"""Response bodies: pydantic models whose descriptions make /docs useful.

The completion responses follow OpenAI's legacy completions API (a token is one
character, or one byte for a byte-vocabulary model); the others are charnet's own. The
requests they answer are in `charnet.server.schemas`.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs object: one entry per generated character."""

    tokens: list[str] = Field(description="The characters, in order.")
    token_logprobs: list[Optional[float]] = Field(description="Natural log-probability of each character under "
                                                              "the model (before every sampling control and constraint); "
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
                                      "vocabulary (every token by id, as `logit_bias` names them), "
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
    models: list[str] = Field(default_factory=list, description="Models served.")
    pid: int = Field(description="The answering process: tells replicas and workers apart.")
    engines: dict[str, list[int]] = Field(default_factory=dict, description="Each model's engine processes that "
                                          "serve now (one being started again is missing).")
