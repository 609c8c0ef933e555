"""Images and video through the server, driven by the `openai` client, against transformers' reference.

The served checkpoint is a random transformers Kimi_K25ForConditionalGeneration written in the
official layout. The expected reply of each greedy request is transformers' `generate` on the
same weights, fed the pixels and prompt our media pipeline produces.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from PIL import Image

from kimi_k25.chat.format import ChatFormat
from kimi_k25.chat.reasoning import split_reasoning
from kimi_k25.media import MediaProcessor, concat_media, expand_media_prompt, find_media_parts
from kimi_k25.media.sources import MediaSourcePolicy
from kimi_k25.tokenizer.tokenizer import KimiTokenizer
from media_helpers import data_url, encode_image, encode_video, random_rgb
from server_helpers import ServerProcess, chat_reply_as_served, openai_client

MODEL_NAME = "tiny-kimi-vl"
MAX_ITEMS = 3


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("allowed-media")
    Image.fromarray(random_rgb(120, 90, seed=4)).save(directory / "photo.png")
    return directory


@pytest.fixture(scope="module")
def server(served_vision_checkpoint, media_dir, tmp_path_factory):
    checkpoint_dir, _ = served_vision_checkpoint
    process = ServerProcess(["--model", str(checkpoint_dir), "--dtype", "float32", "--max-model-len", "4096",
                             "--kv-cache-gib", "0.05", "--allowed-local-media-path", str(media_dir),
                             "--max-media-items", str(MAX_ITEMS)],
                            tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai_client(server.base_url, timeout=120)


@pytest.fixture(scope="module")
def pipeline(served_vision_checkpoint, media_dir):
    checkpoint_dir, reference = served_vision_checkpoint
    tokenizer = KimiTokenizer.from_dir(checkpoint_dir)
    processor = MediaProcessor(policy=MediaSourcePolicy.from_options(media_dir))
    return tokenizer, ChatFormat.from_dir(checkpoint_dir), processor, reference


def expected_reply(pipeline, messages, max_tokens: int, thinking: bool = True):
    """Greedy reply of transformers for the same prompt ids and pixels; (text, prompt token count)."""
    tokenizer, chat_format, processor, reference = pipeline
    kwargs = None if thinking else {"thinking": False}
    rendered = chat_format.render(messages, chat_template_kwargs=kwargs)
    media = [processor.process_part(part) for part in find_media_parts(messages)]
    expanded = expand_media_prompt(rendered, media)
    prompt_ids = tokenizer.encode(expanded.text)
    pixel_values, grids = concat_media(expanded.items)
    with torch.no_grad():
        output = reference.generate(input_ids=torch.tensor([prompt_ids]), pixel_values=pixel_values,
                                    image_grid_thw=torch.tensor(grids), max_new_tokens=max_tokens,
                                    min_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    text, _ = chat_reply_as_served(tokenizer, output[0, len(prompt_ids):].tolist())
    return text, len(prompt_ids), expanded.num_media_tokens


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


PHOTO = data_url(encode_image(Image.fromarray(random_rgb(200, 150, seed=1))))
DRAWING = data_url(encode_image(Image.fromarray(random_rgb(64, 300, seed=2)), format="JPEG"), "image/jpeg")
VIDEO = data_url(encode_video(num_frames=40, width=112, height=84, fps=10), "video/mp4")


def test_one_image_matches_reference(client, pipeline):
    messages = [{"role": "user", "content": [image_part(PHOTO), {"type": "text", "text": "What is this?"}]}]
    text, num_prompt, num_media = expected_reply(pipeline, messages, 10)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10, temperature=0)
    reasoning, content = split_reasoning(text, thinking=True)
    assert reply.choices[0].message.model_extra["reasoning_content"] == reasoning
    assert reply.choices[0].message.content == content
    assert reply.usage.prompt_tokens == num_prompt
    # 200×150 needs no resize and pads to 224×168: a 12×16 patch grid, 6×8 merged tokens.
    assert num_media == 6 * 8


def test_two_images_stream_matches_reference(client, pipeline):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Compare"}, image_part(PHOTO),
                                             {"type": "text", "text": "and"}, image_part(DRAWING)]}]
    text, num_prompt, _ = expected_reply(pipeline, messages, 12, thinking=False)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"chat_template_kwargs": {"thinking": False}})
    content, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
    assert content == text
    assert usage.prompt_tokens == num_prompt


@pytest.mark.parametrize("stream", [False, True])
def test_video_matches_reference(client, pipeline, stream):
    messages = [{"role": "user", "content": [video_part(VIDEO), {"type": "text", "text": "Describe the clip."}]}]
    text, num_prompt, num_media = expected_reply(pipeline, messages, 8, thinking=False)
    kwargs = dict(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0,
                  extra_body={"chat_template_kwargs": {"thinking": False}})
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        reply = client.chat.completions.create(**kwargs)
        content, usage = reply.choices[0].message.content, reply.usage
    assert content == text
    assert usage.prompt_tokens == num_prompt
    # 4 s at 10 fps sampled at 2 fps: 8 frames in two chunks of 4; 112×84 is a 6×8 grid, 3×4 tokens each.
    assert num_media == 2 * 12


def test_large_image_keeps_its_media_tokens(client, pipeline):
    """Thousands of <|media_pad|> tokens in a row are encoded as tokens, never split as text."""
    large = data_url(encode_image(Image.fromarray(random_rgb(1400, 1400, seed=5))))
    messages = [{"role": "user", "content": [image_part(large)]}]
    _, num_prompt, num_media = expected_reply(pipeline, messages, 1)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1, temperature=0)
    assert num_media == 50 * 50
    assert reply.usage.prompt_tokens == num_prompt


def test_local_file_inside_allowed_dir(client, media_dir):
    reply = client.chat.completions.create(
        model=MODEL_NAME, max_tokens=2, temperature=0,
        messages=[{"role": "user", "content": [image_part(f"file://{media_dir / 'photo.png'}")]}])
    assert reply.usage.prompt_tokens > 12  # 120×90 pads to 140×112: 5×4 = 20 media tokens


@pytest.mark.parametrize(("part", "code"), [
    (image_part("data:image/png;base64,bm90IGFuIGltYWdl"), None),
    (image_part("file:///etc/hostname"), "path_not_allowed"),
    (image_part("http://media.example.invalid/cat.png"), None),
    (image_part("ftp://files.example.invalid/cat.png"), None),
    (video_part(data_url(b"\x00\x01garbage" * 50, "video/mp4")), None),
    ({"type": "image_url", "image_url": {}}, None),
])
def test_bad_media_is_400_naming_the_part(server, part, code):
    body = {"model": MODEL_NAME, "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, part]}]}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("messages[0].content[1]")
    if code is not None:
        assert error["code"] == code


def test_too_many_media_items(server):
    parts = [image_part(PHOTO)] * (MAX_ITEMS + 1)
    body = {"model": MODEL_NAME, "max_tokens": 2, "messages": [{"role": "user", "content": parts}]}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert str(MAX_ITEMS) in response.json()["error"]["message"]


def test_media_pad_in_text_is_rejected(server):
    body = {"model": MODEL_NAME, "max_tokens": 2, "messages": [{"role": "user", "content": [
        image_part(PHOTO), {"type": "text", "text": "sneaky <|media_pad|> token"}]}]}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert "<|media_pad|>" in response.json()["error"]["message"]


def test_server_keeps_serving_after_media_errors(client, server):
    httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
        "model": MODEL_NAME, "messages": [{"role": "user", "content": [image_part("data:image/png;base64,AAAA")]}]})
    reply = client.chat.completions.create(model=MODEL_NAME, max_tokens=2, temperature=0,
                                           messages=[{"role": "user", "content": [image_part(PHOTO)]}])
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert "Traceback" not in server.log()
