"""A stand-in for the model whose replies are scripted text, for end-to-end tests of the chat API.

A random model writes random tokens, so tests that need a known reply (a tool call, a final
answer after a tool result) serve this module instead. For every sequence it decodes the
prompt, asks `reply_for(prompt_text)` for the reply text, and puts a high logit on the next
token of that reply followed by `<|im_end|>`. Grammar masks and banned tokens still apply, so
the engine's constraints act on it exactly as on a real model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
import uvicorn
from torch import nn

from kimi_k25.chat.format import ChatFormat
from kimi_k25.engine.async_engine import AsyncEngine
from kimi_k25.engine.llm_engine import EngineConfig, LLMEngine
from kimi_k25.model.cache import AttentionBatch
from kimi_k25.model.config import KimiK25Config
from kimi_k25.server.app import create_app
from kimi_k25.server.context import ServingContext
from kimi_k25.tokenizer.tokenizer import KimiTokenizer
from server_helpers import free_port

SCRIPTED_LOGIT = 10.0
# When a grammar masks the scripted token, these tokens are preferred over the rest, so that a
# constrained reply closes its strings, objects and tool-call markers instead of growing forever.
# A quote beats a closing bracket, which beats the rest, so strings end before objects do.
CLOSING_TEXT = {'"': 3.0, "}": 2.0, "]": 2.0, "{": 1.0, ":": 1.0, ",": 1.0}
CLOSING_MARKERS = ("<|tool_call_argument_begin|>", "<|tool_call_end|>", "<|tool_calls_section_end|>")
CLOSING_LOGIT = 1.0


class ScriptedModel(nn.Module):
    def __init__(self, tokenizer: KimiTokenizer, reply_for: Callable[[str], str]) -> None:
        super().__init__()
        self.config = KimiK25Config.from_dict({
            "model_type": "deepseek_v3", "vocab_size": tokenizer.vocab_size, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 1, "q_lora_rank": None, "kv_lora_rank": 4,
            "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2, "n_routed_experts": 0,
            "first_k_dense_replace": 1, "intermediate_size": 8, "max_position_embeddings": 1_000_000,
            "eos_token_id": tokenizer.eos_token_id})
        self.tokenizer = tokenizer
        self.reply_for = reply_for
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the engine a dtype and a device
        self.histories: dict[int, list[int]] = {}
        self.prompt_lengths: dict[int, int] = {}
        self.replies: dict[int, list[int]] = {}
        self.prompts_seen: list[str] = []
        self._pending: list[torch.Tensor] = []
        self.base_logits = torch.zeros(tokenizer.vocab_size)
        for text, logit in CLOSING_TEXT.items():
            self.base_logits[tokenizer.encode(text)] = logit
        for marker in CLOSING_MARKERS:
            self.base_logits[tokenizer.token_to_id(marker)] = CLOSING_LOGIT

    def forward(self, input_ids, batch: AttentionBatch, cache=None, media_embeds=None, media_mask=None):
        start = 0
        self._pending = []
        for i, (query_len, context_len) in enumerate(zip(batch.query_lens, batch.context_lens)):
            key = batch.block_tables[i][0]
            new_ids = input_ids[start:start + query_len].tolist()
            start += query_len
            if query_len == context_len:  # a new sequence: decode its prompt and script the reply
                self.histories[key] = new_ids
                self.prompt_lengths[key] = context_len
                prompt = self.tokenizer.decode(new_ids)
                self.prompts_seen.append(prompt)
                self.replies[key] = self.tokenizer.encode(self.reply_for(prompt)) + [self.tokenizer.im_end_id]
            else:
                self.histories[key].extend(new_ids)
            position = len(self.histories[key]) - self.prompt_lengths[key]
            reply = self.replies[key]
            logits = self.base_logits.clone()
            logits[reply[min(position, len(reply) - 1)]] = SCRIPTED_LOGIT
            self._pending.append(logits)
        # Row t carries the index of its sequence, so compute_logits can find the scripted logits.
        sequence_of_token = torch.repeat_interleave(torch.arange(len(batch.query_lens)),
                                                    torch.tensor(batch.query_lens))
        return sequence_of_token[:, None].float()

    def compute_logits(self, hidden):
        return torch.stack([self._pending[int(i)] for i in hidden[:, 0]])


class InProcessServer:
    """Serve a model object on 127.0.0.1 from a thread of the test process."""

    def __init__(self, model: nn.Module, tokenizer: KimiTokenizer, chat_format: ChatFormat,
                 name: str = "scripted") -> None:
        # The scripted model recognises a new sequence by a prefill that covers its whole context and
        # keys sequences by their first block, so prefix sharing and chunked prefill stay off.
        engine = LLMEngine(model, tokenizer, EngineConfig(num_blocks=4096, block_size=16, max_num_seqs=8,
                                                          enable_prefix_caching=False,
                                                          max_num_batched_tokens=1 << 20))
        self.async_engine = AsyncEngine(engine)
        self.async_engine.start()
        context = ServingContext(engine=self.async_engine, tokenizer=tokenizer, chat_format=chat_format,
                                 served_model_name=name, model_path="scripted", max_model_len=engine.max_model_len)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(context), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.async_engine.stop()
