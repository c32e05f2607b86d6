"""Defaults written once: the runtime CLI, the server's request fields, `-p` and the
builder's memory estimate all read them from here. Plain constants, so importing
this module costs nothing at launch."""

# Tokens of context when the model was trained on more (or says nothing): enough
# for long chats, while a model trained on 128k does not reserve 128k of KV cache.
CONTEXT = 8192

# llama-server's sampling defaults (common/common.h), so the same request samples
# the same way against our file and against llama-server.
TEMPERATURE = 0.8
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
REPEAT_PENALTY = 1.0
REPEAT_LAST_N = 64
PRESENCE_PENALTY = 0.0
FREQUENCY_PENALTY = 0.0
