"""Every request body the server accepts, each field declared once.

A field's type, range, default and description live here, in a msgspec Struct.
`parse` checks a body against its Struct, and the OpenAPI document's request
schemas come from the same Structs (`body_schemas`), so the document and the
checks cannot disagree; tests/runtime/server/test_requests.py holds one against the other.

Two rules hold for every body, in both: fields the server does not know are
ignored (clients send extra ones), and a top-level null means the default.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct
from msgspec import inspect as mi

from llamapack.runtime import defaults
from llamapack.runtime.engine.sampling import SamplingParams

INT32 = 2**31 - 1
# Each input is one decode on a 2-core laptop: 2048 (OpenAI's limit) would
# hold the embeddings context for most of a minute.
MAX_EMBEDDING_INPUTS = 256
# llama.cpp's repeat_last_n -1 means the whole context; 8192 covers ours.
_CONTEXT_LAST_N = 1 << 13

Token = Annotated[int, Meta(ge=0)]
TokenIds = Annotated[list[Token], Meta(min_length=1)]
MaxTokens = Annotated[int, Meta(ge=0, le=INT32)]
# OpenAI's cap on the alternatives returned for each token.
Alternatives = Annotated[int, Meta(ge=0, le=20)]


class BadRequest(ValueError):
    """A request field is missing, of the wrong type or out of range."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Generation:
    """What one request asks of the engine, whichever route it came by."""

    sampling: SamplingParams
    max_tokens: int | None
    stop: list[str]
    ignore_eos: bool
    logprobs: int | None = None  # None: off; k: each token's logprob and its k best rivals
    cache_prompt: bool = True
    return_progress: bool = False
    post_sampling_probs: bool = False


# ------------------------------------------------------------ several forms


class OneOf:
    """A field that takes one of several JSON forms.

    A msgspec union holds one array type at most, and a prompt can be a list
    of token ids or a list of prompts: each of `forms` is tried in turn, and
    the schema offers them all (`_schema_hook`).
    """

    forms: ClassVar[tuple[Any, ...]]
    expects: ClassVar[str]  # completes "'prompt' must be ..."

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def decode(cls, value: Any) -> OneOf:
        for form in cls.forms:
            try:
                return cls(msgspec.convert(value, form))
            except msgspec.ValidationError:
                continue
        raise ValueError(cls.expects)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


# One prompt: text, token ids, both mixed in one sequence, or llama-server's JSON
# prompt {"prompt_string": ..., "multimodal_data": [...]} (media: none here). A batch
# of prompts is bounded by the queue (--max-queue): past it, 503.
OnePrompt = str | Annotated[list[str | Token], Meta(min_length=1)] | dict[str, Any]


class Prompt(OneOf):
    """One prompt (a string, token ids, ids and strings mixed, or {"prompt_string": ...}),
    or a list of prompts, each answered on its own."""

    forms = (OnePrompt, Annotated[list[OnePrompt], Meta(min_length=1)])
    expects = (
        "a string, a list of token ids (strings may be mixed in), an object with prompt_string, "
        "or a list of those"
    )

    @classmethod
    def decode(cls, value: Any) -> OneOf:
        # A list of ids and strings with at least one id is one prompt; any other
        # list is several (llama-server's rule: ["a", "b"] is two prompts).
        single = not isinstance(value, list) or any(type(item) is int for item in value)
        try:
            if single:
                return cls([msgspec.convert(value, OnePrompt)])
            return cls(msgspec.convert(value, cls.forms[1]))
        except msgspec.ValidationError:
            raise ValueError(cls.expects) from None

    def __init__(self, value: Any) -> None:
        prompts: list[list[str | int]] = []
        for prompt in value:
            if isinstance(prompt, dict):
                if prompt.get("multimodal_data"):
                    raise ValueError("multimodal_data needs a model with vision; this one reads text only")
                if not isinstance(prompt.get("prompt_string"), str):
                    raise ValueError("a JSON prompt needs a string prompt_string")
                prompt = prompt["prompt_string"]
            prompts.append([prompt] if isinstance(prompt, str) else list(prompt))
        self.value: list[list[str | int]] = prompts


class EmbeddingInput(OneOf):
    """A string, a list of token ids, or a list of up to MAX_EMBEDDING_INPUTS of either."""

    forms = (
        str,
        TokenIds,
        Annotated[list[str | TokenIds], Meta(min_length=1, max_length=MAX_EMBEDDING_INPUTS)],
    )
    expects = f"a string, a list of token ids, or a list of 1 to {MAX_EMBEDDING_INPUTS} of those"

    def __init__(self, value: Any) -> None:
        if isinstance(value, str) or isinstance(value[0], int):
            value = [value]  # one input
        self.value: list[str | list[int]] = value


# ------------------------------------------------------------ generation


class StreamOptions(Struct, kw_only=True):
    include_usage: bool | None = None


class GenerationRequest(Struct, kw_only=True):
    """The fields every generating route shares, with llama-server's defaults."""

    temperature: Annotated[
        float, Meta(ge=0.0, le=100.0, description="Randomness; 0 always takes the likeliest token.")
    ] = defaults.TEMPERATURE
    top_k: Annotated[
        float, Meta(ge=0, le=1_000_000, description="Sample among the k likeliest tokens; 0: all of them.")
    ] = defaults.TOP_K
    top_p: Annotated[
        float, Meta(ge=0.0, le=1.0, description="Sample among the likeliest tokens adding up to p.")
    ] = defaults.TOP_P
    min_p: Annotated[
        float, Meta(ge=0.0, le=1.0, description="Drop tokens less likely than min_p times the likeliest one.")
    ] = defaults.MIN_P
    repeat_penalty: Annotated[
        float, Meta(ge=0.0, le=100.0, description="Penalty on tokens among the last repeat_last_n; 1: none.")
    ] = defaults.REPEAT_PENALTY
    repeat_last_n: Annotated[
        int, Meta(ge=-1, le=1 << 16, description="How many recent tokens the penalties look at; -1: all.")
    ] = defaults.REPEAT_LAST_N
    presence_penalty: Annotated[
        float, Meta(ge=-2.0, le=2.0, description="Lowers the odds of every token already generated.")
    ] = defaults.PRESENCE_PENALTY
    frequency_penalty: Annotated[
        float, Meta(ge=-2.0, le=2.0, description="Lowers the odds of a token by how often it was generated.")
    ] = defaults.FREQUENCY_PENALTY
    # OpenAI's range (int64); msgspec bounds cannot reach past it anyway.
    seed: Annotated[
        int, Meta(ge=-(2**63), le=2**63 - 1, description="The same seed, the same reply; negative: random.")
    ] = -1
    stop: Annotated[str | list[str], Meta(description="Text that ends the reply, itself left out.")] = []
    max_completion_tokens: Annotated[
        MaxTokens | None, Meta(description="Most tokens to generate; over max_tokens or n_predict.")
    ] = None
    ignore_eos: Annotated[bool, Meta(description="Go on past the model's end of text.")] = False
    cache_prompt: Annotated[
        bool | None, Meta(description="Reuse the cached start of the prompt; default: true without a seed.")
    ] = None
    stream: Annotated[bool, Meta(description="Send the reply as server-sent events.")] = False
    stream_options: StreamOptions | None = None
    verbose: Annotated[bool, Meta(description="Add __verbose: the prompt as the model saw it.")] = False
    timings_per_token: Annotated[bool, Meta(description="Streamed pieces carry the timings so far.")] = False
    return_progress: Annotated[
        bool, Meta(description="Stream the prompt's evaluation progress (prompt_progress).")
    ] = False
    post_sampling_probs: Annotated[
        bool, Meta(description="Probabilities after the sampler chain (prob, top_probs) instead of logprobs.")
    ] = False
    grammar: Annotated[str | None, Meta(description="A GBNF grammar the reply follows.")] = None
    json_schema: Annotated[dict[str, Any] | None, Meta(description="A JSON schema the reply follows.")] = None
    logit_bias: Annotated[
        dict[str, float | bool] | list[tuple[Token | str, float | bool]] | None,
        Meta(
            description="Added to tokens' logits: {token id or text: bias} or [[token id or text, bias]]; "
            "false bans the token, and a text's every token gets the bias."
        ),
    ] = None

    def generation(self) -> Generation:
        sampling = SamplingParams(
            temperature=self.temperature,
            top_k=int(self.top_k),
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            repeat_last_n=_CONTEXT_LAST_N if self.repeat_last_n < 0 else self.repeat_last_n,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=None if self.seed < 0 else self.seed,
        )
        # A reused prompt cache evaluates the last prompt token alone, and llama.cpp's
        # kernels round a lone token slightly differently from a batch: with a seed,
        # the same request must give the same reply, so it is evaluated from scratch.
        cache_prompt = sampling.seed is None if self.cache_prompt is None else self.cache_prompt
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return Generation(
            sampling,
            self.token_limit(),
            [s for s in stops if s],
            self.ignore_eos,
            logprobs=self.logprob_alternatives(),
            cache_prompt=cache_prompt,
            return_progress=self.return_progress and self.stream,
            post_sampling_probs=self.post_sampling_probs,
        )

    def token_limit(self) -> int | None:
        return self.max_completion_tokens

    def bias_entries(self) -> list[tuple[int | str, float]]:
        """`logit_bias` as (token id or text, bias) pairs; llama-server reads an
        object's key as a token id when it is all digits, else as text."""
        if self.logit_bias is None:
            return []
        pairs = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        entries: list[tuple[int | str, float]] = []
        for key, bias in pairs:
            if isinstance(key, str) and key.isdigit():
                key = int(key)
            if bias is True:
                raise BadRequest("'logit_bias' takes a number or false (ban) for each token", "logit_bias")
            entries.append((key, -math.inf if bias is False else float(bias)))
        return entries

    def logprob_alternatives(self) -> int | None:
        return None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage is True


class JsonSchemaFormat(Struct, kw_only=True):
    schema: Annotated[dict[str, Any] | None, Meta(description="Absent: any JSON.")] = None


class ResponseFormat(Struct, kw_only=True):
    """The reply's format: free text, any JSON, or JSON that follows a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema: Annotated[dict[str, Any] | None, Meta(description="With json_object (llama-server's).")] = None


class OpenAIRequest(GenerationRequest, kw_only=True):
    """What OpenAI's chat and legacy completions share."""

    model: Annotated[str | None, Meta(description="Ignored: the file serves one model.")] = None
    max_tokens: Annotated[MaxTokens | None, Meta(description="Most tokens to generate.")] = None
    n: Annotated[
        int, Meta(ge=1, le=INT32, description="Choices, generated together: at most the server's slots.")
    ] = 1
    response_format: ResponseFormat | None = None

    def token_limit(self) -> int | None:
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens


class TextPart(Struct, kw_only=True):
    type: Literal["text"]
    text: str = ""


class FunctionCall(Struct, kw_only=True):
    name: str
    arguments: Annotated[str | dict[str, Any], Meta(description="JSON text (OpenAI's), or an object.")] = "{}"


class ToolCall(Struct, kw_only=True):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Struct, kw_only=True):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall] | None, Meta(description="An assistant's calls.")] = None
    tool_call_id: Annotated[str | None, Meta(description="The call a tool message answers.")] = None
    reasoning_content: Annotated[str | None, Meta(description="An assistant's reasoning.")] = None


class FunctionSpec(Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    description: str | None = None
    parameters: Annotated[dict[str, Any] | None, Meta(description="The arguments' JSON schema.")] = None
    strict: bool | None = None


class Tool(Struct, kw_only=True):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Struct, kw_only=True):
    name: str


class NamedToolChoice(Struct, kw_only=True):
    type: Literal["function"]
    function: NamedFunction


REASONING_FORMATS = ("auto", "deepseek", "deepseek-legacy", "none")


class ChatCompletionRequest(OpenAIRequest, kw_only=True):
    """OpenAI's chat completion."""

    messages: Annotated[list[Message], Meta(min_length=1)]
    tools: Annotated[list[Tool] | None, Meta(description="Functions the model may call.")] = None
    tool_choice: Annotated[
        Literal["auto", "none", "required"] | NamedToolChoice | None,
        Meta(description="Whether the model must, may or must not call a tool, or which one."),
    ] = None
    parallel_tool_calls: Annotated[
        bool | None, Meta(description="Several calls in one reply; default: as the template allows.")
    ] = None
    chat_template_kwargs: Annotated[
        dict[str, Any] | None, Meta(description="Extra variables for the chat template (enable_thinking).")
    ] = None
    reasoning_format: Annotated[
        Literal["auto", "deepseek", "deepseek-legacy", "none"] | None,
        Meta(description="Where <think> text goes; default: the server's --reasoning-format."),
    ] = None
    add_generation_prompt: Annotated[
        bool | None, Meta(description="End the prompt with the reply's header (default: true).")
    ] = None
    continue_final_message: Annotated[
        bool | Literal["content", "reasoning_content"] | None,
        Meta(description="Continue the last (assistant) message; default: when the chat ends with one."),
    ] = None
    reasoning_effort: Annotated[
        str | None, Meta(description="Given to the chat template; none turns reasoning off.")
    ] = None
    logprobs: Annotated[bool, Meta(description="Each token's log-probability.")] = False
    top_logprobs: Annotated[Alternatives, Meta(description="With logprobs: the likeliest alternatives.")] = 0

    def logprob_alternatives(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
            return None
        return self.top_logprobs


class MessagesChatRequest(ChatCompletionRequest, kw_only=True):
    """A chat request translated from Anthropic's Messages API, which (as llama-server)
    takes an empty conversation: the template alone makes the prompt."""

    messages: list[Message] = []


class TextCompletionRequest(OpenAIRequest, kw_only=True):
    """OpenAI's legacy text completion."""

    n: Annotated[Literal[1], Meta(description="One choice per prompt (chat completions take more).")] = 1

    prompt: Prompt
    echo: Annotated[Literal[False], Meta(description="Not supported.")] = False
    logprobs: Annotated[
        bool | Alternatives, Meta(description="Each token's log-probability and this many alternatives.")
    ] = False

    def logprob_alternatives(self) -> int | None:
        return _alternatives(self.logprobs)


class LlamaCompletionRequest(GenerationRequest, kw_only=True):
    """llama-server's native completion."""

    prompt: Prompt
    content: Annotated[
        Prompt | None, Meta(description="llama.cpp's older name for prompt, if prompt is absent.")
    ] = None
    n_predict: Annotated[
        int, Meta(ge=-1, le=INT32, description="Most tokens to generate; -1: up to the context.")
    ] = -1
    n_probs: Annotated[
        bool | Alternatives, Meta(description="Each token's log-probability and this many alternatives.")
    ] = 0

    def token_limit(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return None if self.n_predict < 0 else self.n_predict

    def logprob_alternatives(self) -> int | None:
        return _alternatives(self.n_probs) or None  # n_probs 0 asks for none


def _alternatives(value: bool | int) -> int | None:
    """`logprobs` or `n_probs`: false, true (no alternatives) or how many alternatives."""
    if value is False:
        return None
    return 0 if value is True else value


# ------------------------------------------------------------ other bodies


class EmbeddingsRequest(Struct, kw_only=True):
    """OpenAI's embeddings."""

    model: Annotated[str | None, Meta(description="Ignored: the file serves one model.")] = None
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"


class TokenizeRequest(Struct, kw_only=True):
    content: str
    add_special: Annotated[bool, Meta(description="Add the model's start-of-text token.")] = False
    with_pieces: Annotated[bool, Meta(description="Each token's text too.")] = False


class DetokenizeRequest(Struct, kw_only=True):
    tokens: list[Token] = []


BODIES: tuple[type[Struct], ...] = (
    ChatCompletionRequest,
    TextCompletionRequest,
    LlamaCompletionRequest,
    EmbeddingsRequest,
    TokenizeRequest,
    DetokenizeRequest,
)

# ------------------------------------------------------------ checking

B = TypeVar("B", bound=Struct)


def parse(body: dict[str, Any], kind: type[B], defaults: Mapping[str, Any] | None = None) -> B:
    """`body` as a `kind`, or BadRequest naming the first field that does not fit.

    `defaults` fill the fields the body leaves out: the server's own (--temp,
    --seed, ...), as llama-server applies its flags to every request."""
    present = {name: value for name, value in body.items() if value is not None}
    if defaults:
        fields = set(kind.__struct_fields__)
        if "seed" in defaults and "seed" not in present and "cache_prompt" in fields:
            # Only a request that asks for a seed gives up the prompt cache for an
            # exact replay (GenerationRequest.generation); a server-wide seed does not.
            present.setdefault("cache_prompt", True)
        present = {**{name: value for name, value in defaults.items() if name in fields}, **present}
    try:
        return msgspec.convert(present, kind, dec_hook=_decode_hook)
    except msgspec.ValidationError as exc:
        raise _bad_request(kind, str(exc)) from None


def _decode_hook(kind: type, value: Any) -> Any:
    if issubclass(kind, OneOf):
        return kind.decode(value)
    raise NotImplementedError(kind)


# msgspec says where, as "Expected `int` >= 0 - at `$.messages[0].role`", or names
# a missing field; the message is then written from the declared type.
_WHERE = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _bad_request(kind: type[Struct], error: str) -> BadRequest:
    where = _WHERE.fullmatch(error)
    assert where is not None  # every part of the pattern is optional
    path = where["path"] or ""
    missing = _MISSING.fullmatch(where["what"])
    if missing:
        path += "." + missing["name"]
    field = path.lstrip(".")
    if not field:
        return BadRequest(where["what"])
    param = re.split(r"[.\[]", field, maxsplit=1)[0]
    expected = _expected(_type_at(kind, path))
    return BadRequest(f"'{field}' must be {expected}" if expected else f"'{field}': {where['what']}", param)


@functools.cache
def _type_info(kind: type[Struct]) -> mi.Type:
    return mi.type_info(kind)


def _type_at(kind: type[Struct], path: str) -> mi.Type | None:
    """The declared type at a msgspec path (".messages[0].role"); None if it cannot be told."""
    node: mi.Type | None = _type_info(kind)
    for name, _index in _STEP.findall(path):
        if name:
            struct = _as(node, mi.StructType)
            node = next((f.type for f in struct.fields if f.encode_name == name), None) if struct else None
        else:
            array = _as(node, mi.ListType)
            node = array.item_type if array else None
    return node


T = TypeVar("T", bound=mi.Type)


def _as(node: mi.Type | None, kind: type[T]) -> T | None:
    """`node` as a `kind`, looking through metadata and unions."""
    if isinstance(node, mi.Metadata):
        return _as(node.type, kind)
    if isinstance(node, mi.UnionType):
        return next((found for t in node.types if (found := _as(t, kind)) is not None), None)
    return node if isinstance(node, kind) else None


def _expected(node: mi.Type | None) -> str:
    """A value of a declared type, in words: "a number between -2.0 and 2.0"."""
    if isinstance(node, mi.Metadata):
        return _expected(node.type)
    if isinstance(node, mi.UnionType):
        return _either([_expected(t) for t in node.types if not isinstance(t, mi.NoneType)])
    if isinstance(node, (mi.IntType, mi.FloatType)):
        noun = "an integer" if isinstance(node, mi.IntType) else "a number"
        if node.ge is not None and node.le is not None:
            return f"{noun} between {node.ge} and {node.le}"
        return noun if node.ge is None else f"{noun} of at least {node.ge}"
    if isinstance(node, mi.ListType):
        items = _PLURALS.get(type(_bare(node.item_type)), "values")
        low, high = node.min_length or 0, node.max_length
        if high is not None:
            return f"a list of {low} to {high} {items}" if low != high else f"a list of {low} {items}"
        return f"a non-empty list of {items}" if low else f"a list of {items}"
    if isinstance(node, mi.LiteralType):
        return _either([json.dumps(value) for value in node.values])
    if isinstance(node, mi.CustomType) and issubclass(node.cls, OneOf):
        return node.cls.expects
    return _NOUNS.get(type(node), "")


def _either(choices: list[str]) -> str:
    return " or ".join(choices) if len(choices) < 3 else ", ".join(choices[:-1]) + " or " + choices[-1]


def _bare(node: mi.Type) -> mi.Type:
    return _bare(node.type) if isinstance(node, mi.Metadata) else node


_NOUNS: dict[type, str] = {
    mi.BoolType: "true or false",
    mi.StrType: "a string",
    mi.StructType: "an object",
    mi.DictType: "an object",
}
_PLURALS: dict[type, str] = {
    mi.IntType: "integers",
    mi.FloatType: "numbers",
    mi.StrType: "strings",
    mi.StructType: "objects",
}


# ------------------------------------------------------------ the schemas


def body_schemas(ref_template: str) -> dict[str, dict[str, Any]]:
    """JSON schemas of every body in BODIES and the types they use, by class name.

    An optional top-level field also takes null, as `parse` reads null as absent.
    """
    _, schemas = msgspec.json.schema_components(BODIES, schema_hook=_schema_hook, ref_template=ref_template)
    for kind in BODIES:
        schema = schemas[kind.__name__]
        required = set(schema.get("required", ()))
        properties = schema["properties"]
        for name, prop in properties.items():
            if name in required or _takes_null(prop):
                continue
            if "anyOf" in prop:
                prop["anyOf"].append(_NULL)
            else:
                notes = {key: prop.pop(key) for key in ("description", "default") if key in prop}
                properties[name] = {"anyOf": [prop, _NULL], **notes}
    return schemas


def _schema_hook(kind: type) -> dict[str, Any]:
    if issubclass(kind, OneOf):
        forms = [msgspec.json.schema(form) for form in kind.forms]
        return {"anyOf": forms, "description": " ".join((kind.__doc__ or "").split())}
    raise NotImplementedError(kind)


_NULL = {"type": "null"}


def _takes_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or _NULL in schema.get("anyOf", [])
