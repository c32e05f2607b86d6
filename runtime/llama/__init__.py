"""llama.cpp through ctypes: the model, ggml's loader, CPU variants, devices, chat templates."""
