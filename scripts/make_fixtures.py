#!/usr/bin/env python3
"""Build Mideum's test fixtures: tiny random Mi:dm-shaped checkpoints and golden values.

Run from anywhere:  python3 scripts/make_fixtures.py
(needs the exact versions in scripts/requirements-fixtures.txt; nothing is downloaded)

Everything is written under testdata/ of the repository and is deterministic: the
tokenizer is trained on a corpus embedded below, the weights come from fixed torch
seeds, and the golden values are computed with Hugging Face `transformers` in f32
on CPU. Running the script twice gives byte-identical files.

What it writes
  testdata/models/tokenizer/         the shared tokenizer (tokenizer.json, tokenizer_config.json,
                                     special_tokens_map.json); copied into every model dir
  testdata/models/<name>/            HF checkpoints (config.json, generation_config.json,
                                     tokenizer files, *.safetensors [+ index])
  testdata/models/<name>.gguf        llama.cpp-style GGUF conversions of three of them
  testdata/golden/tokenizer.json     tokenize / encode / decode / chat-template render goldens
  testdata/golden/<name>.json        logprobs, greedy continuations and raw logits per model

Mi:dm 2.0 quirks reproduced (see testdata/README.md for the list):
  * head_dim * num_heads != hidden_size, GQA, tied embeddings, rope_theta 8e6
  * bos 0 / pad 1 / eos 2 at the front of the vocab, chat specials appended at the end
  * generation_config eos_token_id is a list [2, <|eot_id|>]
  * a Llama-3 style byte-level BPE tokenizer.json with the Llama-3 split regex
  * a chat template with strftime_now, tools, <tool_call> and <tool_response> blocks
The chat template and the Korean texts are our own; nothing is copied from KT's files.
"""

from __future__ import annotations

import os

# Never touch the network: everything here is made locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
MODELS = TESTDATA / "models"
GOLDEN = TESTDATA / "golden"
TOKDIR = MODELS / "tokenizer"

# The fixed "now" that the chat template's strftime_now() sees. The Rust side injects the same clock.
FIXED_NOW = _dt.datetime(2026, 11, 30, 0, 0, 0)

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Llama-3's pre-tokenizer split pattern.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BOS, PAD, EOS = "<|begin_of_text|>", "<pad>", "<|end_of_text|>"
EOT, SHS, SHE = "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"
# Special tokens appended after the trained vocabulary (Mi:dm keeps them near the end too).
TAIL_SPECIALS = [
    "<|reserved_special_token_0|>",
    SHS,
    SHE,
    EOT,
    "#@이름@#",
    "#@주민번호@#",
    "#@전화번호@#",
    "#@주소@#",
    "#@이메일@#",
    "#@계좌번호@#",
    "<|reserved_special_token_1|>",
]
TRAIN_VOCAB = 2300  # ids 0..1999 come from training (incl. the 3 head specials)

CORPUS = """\
안녕하세요. 오늘은 2026년 11월 30일 월요일입니다. 서울의 아침 기온은 영하 3도이고, 오후에는 맑겠습니다.
고객님, 주문하신 상품은 내일 오전 10시에서 12시 사이에 배송될 예정입니다. 배송 조회는 앱에서 확인하실 수 있습니다.
회의는 3층 대회의실에서 오후 2시 30분에 시작합니다. 참석자는 기획팀, 개발팀, 영업팀 담당자입니다.
이번 분기 매출은 전년 동기 대비 12.5% 증가한 1,234억 원을 기록했습니다. 영업이익률은 8.7%로 개선되었습니다.
저는 김민지라고 합니다. 회사에서 데이터 분석 업무를 맡고 있어요. 주말에는 한강에서 자전거를 타는 것을 좋아해요.
점심으로 김치찌개와 된장찌개 중에 무엇을 먹을까요? 저는 비빔밥이 더 좋은데, 친구는 냉면을 먹고 싶대요.
계약서 제5조(지급 조건)에 따라 대금은 검수 완료 후 30일 이내에 지급한다. 단, 당사자 간 별도 합의가 있는 경우 그에 따른다.
고객센터 운영 시간은 평일 오전 9시부터 오후 6시까지이며, 주말과 공휴일에는 휴무입니다. 문의: 1588-0000
인공지능 모델은 대규모 말뭉치로 사전 학습한 뒤, 지시 따르기 데이터로 미세 조정합니다. 한국어 이해 능력이 중요합니다.
비밀번호를 5회 이상 잘못 입력하면 계정이 잠깁니다. 본인 인증 후 비밀번호를 재설정해 주세요.
우리 팀의 목표는 고객의 불편을 줄이고, 더 빠르고 정확한 서비스를 제공하는 것입니다. 함께 노력합시다!
어제 본 영화는 정말 재미있었어. 배우들의 연기가 훌륭했고 음악도 좋았어. 다음 주에 같이 보러 갈래?
부산행 KTX는 서울역에서 매시 정각에 출발합니다. 소요 시간은 약 2시간 40분이며 요금은 59,800원입니다.
환불은 구매일로부터 7일 이내에 가능하며, 포장을 개봉한 상품은 환불이 어려울 수 있습니다.
날씨가 추워졌으니 따뜻하게 입고 다니세요. 감기 조심하시고, 물을 자주 마시는 것이 좋습니다.
보고서는 금요일까지 제출해 주시기 바랍니다. 표와 그래프를 포함하고, 결론은 한 쪽 이내로 요약해 주세요.
도서관은 리모델링 공사로 인해 12월 한 달간 임시 휴관합니다. 대출 중인 도서의 반납 기한은 자동 연장됩니다.
한국어는 조사와 어미가 발달한 언어입니다. 예를 들어 '학교에', '학교에서', '학교로', '학교까지'처럼 쓰입니다.
사과 3개, 배 2개, 귤 10개를 샀습니다. 모두 합쳐서 15,000원이었어요. 영수증은 봉투에 넣어 두었습니다.
새해 복 많이 받으세요! 올해도 건강하시고 하시는 일 모두 잘 되기를 바랍니다. 🎉🙏
서비스 이용 약관이 변경되었습니다. 변경된 약관은 2027년 1월 1일부터 적용되며, 동의하지 않으시면 탈퇴할 수 있습니다.
The quick brown fox jumps over the lazy dog. It's a sentence that uses every letter of the alphabet.
Please find the attached invoice for November. The total amount due is $1,250.00, payable within 30 days.
We're excited to announce our new product line! They'll be available in stores next week, and we've got discounts.
Large language models predict the next token given the previous tokens. Sampling uses temperature, top-k and top-p.
Meeting notes: 1) review Q3 results, 2) plan the Q4 roadmap, 3) hire two more engineers. Action items are due Friday.
Korean and English are often mixed in business chat: "내일 meeting 몇 시예요?" "3 PM이요, Zoom 링크 보낼게요."
def greet(name: str) -> str:
    return f"안녕하세요, {name}님!"

for i in range(10):
    if i % 2 == 0:
        print(i, "짝수")
    else:
        print(i, "홀수")

fn main() {
    let v: Vec<u32> = (1..=5).collect();
    println!("합계 = {}", v.iter().sum::<u32>());
}

{"name": "get_weather", "arguments": {"city": "서울", "unit": "celsius"}}
SELECT id, name, price FROM products WHERE price > 10000 ORDER BY price DESC;
전화번호 010-1234-5678, 이메일 test@example.com, 주소 서울특별시 종로구 세종대로 123
오늘의 기분: 😀😂🥲 날씨: ☀️🌧️ 음식: 🍜🍣🍕 고마워요 ❤️
1 2 3 4 5 6 7 8 9 10 100 1000 12345 3.14159 2.71828 0.5 -42 +7 1e-5 8000000
Ünïcödé text, café, naïve, 日本語のテキスト, 中文文本, Привет мир, مرحبا
    indented line with four spaces
\t\ttabbed line

multiple blank lines above and trailing spaces   
"""


def _corpus_lines():
    lines = CORPUS.split("\n")
    # A few synthetic variations so the numbers / particles appear in many contexts.
    particles = ["은", "는", "이", "가", "을", "를", "에", "에서", "으로", "와", "과", "도", "만", "까지"]
    nouns = ["회사", "고객", "서울", "모델", "데이터", "학교", "시장", "가격", "서비스", "계약"]
    extra = []
    for i, n in enumerate(nouns):
        for j, p in enumerate(particles):
            extra.append(f"{n}{p} {(i * 37 + j * 11) % 1000}개 있습니다.")
    return lines * 3 + extra


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAIN_VOCAB,
        min_frequency=1,
        show_progress=False,
        special_tokens=[BOS, PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    n_trained = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens(TAIL_SPECIALS)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(PAD) == 1 and tok.token_to_id(EOS) == 2
    return tok, n_trained


# Our own chat template in Mi:dm's style. It exercises: bos_token, strftime_now, `is defined`,
# messages[0] system split with messages[1:], loop.first / loop.last, messages[loop.index0 - 1],
# `is string`, `is not none`, tojson on tools and arguments, the `|trim` filter, tool_call and
# tool_response blocks (consecutive tool messages share one user header).
CHAT_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now('%d %b %Y') %}
{%- endif %}
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = none %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- '당신은 미듬 엔진을 시험하는 작은 도우미입니다. 질문에는 짧고 정확하게 한국어로 답하세요.\n' }}
{{- '모르는 내용은 모른다고 말하고, 개인정보는 묻지 마세요.\n' }}
{{- '오늘 날짜: ' + date_string + '\n' }}
{%- if tools is not none %}
    {{- '\n다음 도구를 쓸 수 있습니다. 도구가 필요하면 아래 형식으로만 답하세요.\n' }}
    {{- '<tool_call>\n{"name": <함수 이름>, "arguments": <인자 객체>}\n</tool_call>\n' }}
    {{- 'tool_list:' }} {{ tools | tojson() }}
    {{- '\n' }}
{%- endif %}
{%- if system_message is not none %}
    {{- '\n' + system_message }}
{%- endif %}
{{- '<|eot_id|>' }}
{%- for message in messages %}
    {%- if message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|start_header_id|>user<|end_header_id|>\n\n' }}
        {%- else %}
            {{- '\n' }}
        {%- endif %}
        {{- '<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content | trim }}
        {%- else %}
            {{- message.content | tojson }}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|eot_id|>' }}
        {%- endif %}
    {%- elif message.role == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- set has_text = message.content is string and (message.content | trim | length) > 0 %}
        {%- if has_text %}
            {{- message.content | trim }}
        {%- endif %}
        {%- if message.tool_calls is defined and message.tool_calls is not none %}
            {%- for call in message.tool_calls %}
                {%- set fn = call.function if call.function is defined else call %}
                {%- if has_text or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' }}
                {%- if fn.arguments is string %}
                    {{- fn.arguments }}
                {%- else %}
                    {{- fn.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""


def _dump_json(path: Path, obj, *, indent=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_tokenizer(tok, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    # tokenizers' own serializer; pretty so diffs are readable.
    tok.save(str(out / "tokenizer.json"), pretty=True)
    added = {}
    for tid in sorted(tok.get_added_tokens_decoder()):
        at = tok.get_added_tokens_decoder()[tid]
        added[str(tid)] = {
            "content": at.content,
            "lstrip": at.lstrip,
            "normalized": at.normalized,
            "rstrip": at.rstrip,
            "single_word": at.single_word,
            "special": at.special,
        }
    cfg = {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "pad_token": PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _dump_json(out / "tokenizer_config.json", cfg)
    def _tokmap(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    _dump_json(
        out / "special_tokens_map.json",
        {"bos_token": _tokmap(BOS), "eos_token": _tokmap(EOS), "pad_token": _tokmap(PAD)},
    )


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

# Each spec: the HF config as written to config.json (either transformers-4 or -5 style), the
# storage dtype of the weights, how many safetensors shards, and the GGUF conversion (if any).
# vocab_size / eos / bos are filled in from the tokenizer.
COMMON_T4 = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "mlp_bias": False,
    "model_type": "llama",
    "pad_token_id": 1,
    "pretraining_tp": 1,
    "use_cache": True,
}

MODEL_SPECS = [
    {
        # Mi:dm 2.0 Mini in miniature: head_dim*heads (128) != hidden (64), GQA 4:1, tied, theta 8e6.
        "name": "tiny-mini",
        "dtype": "float32",
        "shards": 1,
        "gguf": "F32",
        "seed": 1001,
        "style": "t4",
        "config": {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "head_dim": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 8000000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        },
    },
    {
        # transformers-5 style config (rope_parameters, dtype), llama3 rope, bf16, untied, MQA, 3 shards.
        "name": "tiny-bf16",
        "dtype": "bfloat16",
        "shards": 3,
        "gguf": "BF16",
        "seed": 4,
        "style": "t5",
        "config": {
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "head_dim": 16,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-05,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "tie_word_embeddings": False,
            "dtype": "bfloat16",
        },
    },
    {
        # f16, linear rope scaling (legacy "type" key), GQA 2:1, tied.
        "name": "tiny-f16-linear",
        "dtype": "float16",
        "shards": 1,
        "gguf": "F16",
        "seed": 5,
        "style": "t4",
        "config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "head_dim": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"type": "linear", "factor": 2.0},
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float16",
        },
    },
    {
        # Dynamic NTK rope; max_position_embeddings 32 so the longer golden sequences exceed it.
        "name": "tiny-dynamic",
        "dtype": "float32",
        "shards": 1,
        "gguf": None,
        "seed": 4,
        "style": "t4",
        "config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "head_dim": 8,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
        },
    },
    {
        # YaRN rope (transformers-4 style keys), f32, tied.
        "name": "tiny-yarn",
        "dtype": "float32",
        "shards": 1,
        "gguf": None,
        "seed": 4,
        "style": "t4",
        "config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "head_dim": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 128,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
            },
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        },
    },
]

GEN_CONFIG_BASE = {
    "bos_token_id": 0,
    "do_sample": True,
    "repetition_penalty": 1.0,
    "temperature": 0.8,
    "top_k": 20,
    "top_p": 0.75,
}


def _torch_dtype(name):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def make_weights(spec, vocab_size):
    """Random weights, f32, keyed by HF tensor names (lm_head omitted when tied).

    Scaling: embeddings N(0, 0.5) (so tied logits = rms-normed hidden . E have std ~0.5*sqrt(hidden),
    a clearly peaked softmax), projections N(0, 1/sqrt(fan_in)), norms 1 + N(0, 0.1).
    """
    import torch

    c = spec["config"]
    h, ff, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    g = torch.Generator().manual_seed(spec["seed"])

    def normal(shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def proj(out_f, in_f, gain=1.0):
        return normal((out_f, in_f), gain / math.sqrt(in_f))

    w = {"model.embed_tokens.weight": normal((vocab_size, h), 0.5)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + normal((h,), 0.1)
        w[p + "self_attn.q_proj.weight"] = proj(nh * hd, h, 2.0)
        w[p + "self_attn.k_proj.weight"] = proj(nkv * hd, h, 2.0)
        w[p + "self_attn.v_proj.weight"] = proj(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = proj(h, nh * hd)
        w[p + "post_attention_layernorm.weight"] = 1.0 + normal((h,), 0.1)
        w[p + "mlp.gate_proj.weight"] = proj(ff, h)
        w[p + "mlp.up_proj.weight"] = proj(ff, h)
        w[p + "mlp.down_proj.weight"] = proj(h, ff)
    w["model.norm.weight"] = 1.0 + normal((h,), 0.1)
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = normal((vocab_size, h), 0.5)
    return w


def full_config(spec, vocab_size):
    """config.json content: transformers-4 style written by hand; transformers-5 style taken from
    what transformers itself serializes (LlamaConfig.to_json_string via save_pretrained)."""
    c = spec["config"]
    if spec["style"] == "t4":
        cfg = dict(COMMON_T4)
        cfg.update(c)
        cfg["vocab_size"] = vocab_size
        cfg["transformers_version"] = "4.57.1"  # what a transformers-4 checkpoint carries
        return dict(sorted(cfg.items()))
    from transformers import LlamaConfig

    kwargs = dict(c)
    kwargs.pop("dtype")
    conf = LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        dtype=c["dtype"],
        **kwargs,
    )
    conf.architectures = ["LlamaForCausalLM"]
    tmp = TESTDATA / "tmp" / "t5config"
    if tmp.exists():
        shutil.rmtree(tmp)
    conf.save_pretrained(str(tmp))
    cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    shutil.rmtree(tmp)
    return cfg


def save_safetensors(spec, weights, out: Path):
    import torch
    from safetensors.torch import save_file

    dt = _torch_dtype(spec["dtype"])
    stored = {k: v.to(dt).contiguous() for k, v in weights.items()}
    for old in out.glob("*.safetensors"):
        old.unlink()
    idx = out / "model.safetensors.index.json"
    if idx.exists():
        idx.unlink()
    n = spec["shards"]
    if n == 1:
        save_file(stored, str(out / "model.safetensors"), metadata={"format": "pt"})
        return stored
    # Shard by layer blocks: embeddings + early layers, middle layers, late layers + norm + head.
    names = list(weights.keys())
    nl = spec["config"]["num_hidden_layers"]

    def shard_of(name):
        if name.startswith("model.layers."):
            layer = int(name.split(".")[2])
            return min(n - 1, layer * n // nl)
        return 0 if name == "model.embed_tokens.weight" else n - 1

    weight_map = {}
    total = 0
    for s in range(n):
        fname = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part = {k: stored[k] for k in names if shard_of(k) == s}
        save_file(part, str(out / fname), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    total_params = sum(v.numel() for v in stored.values())
    _dump_json(
        idx,
        {
            "metadata": {"total_parameters": total_params, "total_size": total},
            "weight_map": dict(sorted(weight_map.items())),
        },
    )
    return stored


def write_model_dir(spec, weights, vocab_size, eot_id):
    out = MODELS / spec["name"]
    out.mkdir(parents=True, exist_ok=True)
    cfg = full_config(spec, vocab_size)
    _dump_json(out / "config.json", cfg)
    gen = dict(GEN_CONFIG_BASE)
    gen["eos_token_id"] = [2, eot_id]
    gen["transformers_version"] = cfg.get("transformers_version", "4.57.1")
    _dump_json(out / "generation_config.json", dict(sorted(gen.items())))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(TOKDIR / f, out / f)
    stored = save_safetensors(spec, weights, out)
    return cfg, stored


# ---------------------------------------------------------------------------------------------
# GGUF (the layout llama.cpp's convert_hf_to_gguf.py produces for LlamaForCausalLM)
# ---------------------------------------------------------------------------------------------


def rope_params(cfg):
    """(rope_theta, scaling dict or None) from either config style."""
    if "rope_parameters" in cfg and cfg["rope_parameters"] is not None:
        rp = dict(cfg["rope_parameters"])
        theta = rp.pop("rope_theta")
        kind = rp.get("rope_type", rp.get("type", "default"))
        return theta, (None if kind == "default" else rp)
    return cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling")


def llama3_rope_factors(theta, head_dim, scaling):
    """Per-frequency divisors (llama.cpp's rope_freqs.weight) for rope_type llama3: llama.cpp divides
    each rotary frequency theta^(-2i/d) by factors[i]. Same piecewise rule as HF's llama3 init."""
    factor = scaling["factor"]
    lo, hi = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
    import torch

    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < hi_wavelen:
            out.append(1.0)
        elif wavelen > lo_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved-pair row order, per head."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_tensor_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf_name
    mid = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{HF_TO_GGUF[mid]}.weight"


def write_gguf(spec, cfg, stored, tok_json, tok_cfg, path: Path):
    import gguf
    import torch

    c = spec["config"]
    n_head, n_kv = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c["head_dim"]
    theta, scaling = rope_params(cfg)
    ftype = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
             "BF16": gguf.LlamaFileType.MOSTLY_BF16}[spec["gguf"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"Mideum {spec['name']}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_file_type(ftype)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))

    # --- vocabulary (byte-level BPE, "gpt2" model, llama-bpe pre-tokenizer) ---
    vocab = tok_json["model"]["vocab"]
    added = {t["id"]: t for t in tok_json["added_tokens"]}
    n_vocab = cfg["vocab_size"]
    id_to_tok = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(id_to_tok[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)
    ids = {t["content"]: t["id"] for t in tok_json["added_tokens"]}
    w.add_bos_token_id(ids[BOS])
    w.add_eos_token_id(ids[EOS])
    w.add_eot_token_id(ids[EOT])
    w.add_pad_token_id(ids[PAD])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(tok_cfg["chat_template"])

    # --- tensors, in llama.cpp's order: token_embd, (rope_freqs), blocks, output_norm, output ---
    def as_np(t):
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16), gguf.GGMLQuantizationType.BF16
        return t.numpy(), None

    order = ["model.embed_tokens.weight"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        order += [p + k + ".weight" for k in HF_TO_GGUF]
    order += ["model.norm.weight"]
    if "lm_head.weight" in stored:
        order += ["lm_head.weight"]

    def emit(hf_name):
        t = stored[hf_name]
        if t.ndim == 1:
            t = t.float()  # norms are always F32 in llama.cpp GGUFs
        arr, raw = as_np(t)
        if hf_name.endswith("q_proj.weight"):
            arr = permute_qk(arr, n_head)
        elif hf_name.endswith("k_proj.weight"):
            arr = permute_qk(arr, n_kv)
        arr = np.ascontiguousarray(arr)
        if raw is not None:
            w.add_tensor(gguf_tensor_name(hf_name), arr.view(np.uint8), raw_dtype=raw)
        else:
            w.add_tensor(gguf_tensor_name(hf_name), arr)

    emit(order[0])
    if scaling is not None and scaling.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(theta, head_dim, scaling))
    for name in order[1:]:
        emit(name)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf(spec, cfg, stored, path: Path):
    """Read the GGUF back and compare metadata and (un-permuted) tensors with the HF weights."""
    import gguf
    import torch

    r = gguf.GGUFReader(str(path))
    c = spec["config"]

    def field(key):
        f = r.fields[key]
        return f.contents()

    assert field("general.architecture") == "llama"
    assert field("llama.embedding_length") == c["hidden_size"]
    assert field("llama.attention.head_count") == c["num_attention_heads"]
    assert field("llama.attention.head_count_kv") == c["num_key_value_heads"]
    assert field("llama.attention.key_length") == c["head_dim"]
    assert field("llama.rope.dimension_count") == c["head_dim"]
    assert field("llama.block_count") == c["num_hidden_layers"]
    assert field("llama.vocab_size") == cfg["vocab_size"]
    assert len(field("tokenizer.ggml.tokens")) == cfg["vocab_size"]
    assert field("tokenizer.ggml.model") == "gpt2"
    tensors = {t.name: t for t in r.tensors}
    expect = {gguf_tensor_name(k) for k in stored}
    theta, scaling = rope_params(cfg)
    if scaling is not None and scaling.get("rope_type") == "llama3":
        expect.add("rope_freqs.weight")
    assert set(tensors) == expect, (set(tensors) ^ expect)
    for hf_name, ref in stored.items():
        t = tensors[gguf_tensor_name(hf_name)]
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
        data = data.astype(np.float32).reshape(ref.shape)
        if hf_name.endswith("q_proj.weight"):
            data = unpermute_qk(data, c["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            data = unpermute_qk(data, c["num_key_value_heads"])
        want = ref.float().numpy()
        assert np.array_equal(data, want), hf_name
        # tensor dtype: norms F32, the rest as stored
        if ref.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, hf_name
        else:
            assert t.tensor_type.name == spec["gguf"], (hf_name, t.tensor_type)
    return {k: (v.contents() if k.startswith("llama.") else None) for k, v in r.fields.items()}


# ---------------------------------------------------------------------------------------------
# Golden values (transformers, f32, CPU, eager attention)
# ---------------------------------------------------------------------------------------------

TOKENIZE_TEXTS = [
    "안녕하세요. 오늘은 2026년 11월 30일 월요일입니다.",
    "고객님께서 주문하신 상품은 내일 오전 10시에 도착합니다.",
    "회사에서 회사로, 회사까지, 회사와 고객은 서로 다릅니다.",
    "매출은 1,234억 원이고 영업이익률은 8.7%입니다.",
    "The quick brown fox jumps over the lazy dog.",
    "It's what we've said they'll do, and I'm sure you'd agree.",
    "내일 meeting 몇 시예요? 3 PM이요, Zoom 링크 보낼게요.",
    "오늘 기분 😀😂🥲 날씨 ☀️🌧️ 고마워요 ❤️",
    "👨‍👩‍👧‍👦 family emoji with ZWJ",
    "   leading spaces and trailing spaces   ",
    "tabs\tand\t\tmore tabs",
    "line one\nline two\n\nline four\r\nwindows line",
    "\n\n\n",
    "def greet(name: str) -> str:\n    return f\"안녕하세요, {name}님!\"\n",
    "SELECT id, name FROM users WHERE age >= 20 AND city = '서울';",
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"부산\"}}",
    "응답 끝<|eot_id|>다음 턴",
    "<|start_header_id|>user<|end_header_id|>\n\n안녕?<|eot_id|>",
    "<|begin_of_text|>문서 시작 <|end_of_text|>",
    "제 이름은 #@이름@#이고 주민번호는 #@주민번호@#입니다.",
    "12345678901234567890",
    "3.14159, -42, +7, 1e-5, 8000000",
    "Ünïcödé café naïve 日本語 中文 Привет مرحبا",
    "ㅋㅋㅋㅋ ㅎㅎ 헐... 대박!!!",
    "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"날씨\"}}\n</tool_call>",
    "a",
    "",
]

ENCODE_WITH_SPECIAL_TEXTS = [
    "안녕하세요. 오늘은 2026년 11월 30일 월요일입니다.",
    "Hello, world!",
    "",
    "<|begin_of_text|>이미 BOS가 있는 텍스트",
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "도시의 현재 날씨를 알려줍니다. 온도 단위는 'celsius' 또는 'fahrenheit' (기본값 <celsius>) & 풍속 포함",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "도시 이름, 예: 서울 > 부산"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
EXCHANGE_TOOL = {
    "type": "function",
    "function": {
        "name": "convert_currency",
        "description": "환율로 금액을 바꿉니다 (KRW <-> USD)",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "description": "금액"},
                "from": {"type": "string"},
                "to": {"type": "string"},
            },
            "required": ["amount", "from", "to"],
        },
    },
}

RENDER_CASES = [
    {"messages": [{"role": "user", "content": "안녕하세요!"}], "tools": None, "add_generation_prompt": True},
    {
        "messages": [
            {"role": "system", "content": "너는 친절한 은행 상담원이야."},
            {"role": "user", "content": "계좌 개설은 어떻게 하나요?"},
        ],
        "tools": None,
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "  답은 한 문장으로.  \n"},
            {"role": "user", "content": "  서울의 인구는?  "},
            {"role": "assistant", "content": "\n약 940만 명입니다.\n"},
            {"role": "user", "content": "부산은요?\n\n"},
        ],
        "tools": None,
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "What's 2+2? 영어로 답해 주세요."},
            {"role": "assistant", "content": "2+2 is 4."},
        ],
        "tools": None,
        "add_generation_prompt": False,
    },
    {
        "messages": [{"role": "user", "content": "부산 날씨 알려줘"}],
        "tools": [WEATHER_TOOL, EXCHANGE_TOOL],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "도구를 적극적으로 사용하세요."},
            {"role": "user", "content": "서울과 부산 날씨를 비교해 줘"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "서울", "unit": "celsius"}}},
                    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"부산\"}"}},
                ],
            },
            {"role": "tool", "content": "{\"city\": \"서울\", \"temp\": -3, \"sky\": \"맑음\"}"},
            {"role": "tool", "content": "  {\"city\": \"부산\", \"temp\": 4, \"sky\": \"흐림 & 바람\"}  "},
        ],
        "tools": [WEATHER_TOOL],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "100달러는 원화로 얼마야?"},
            {
                "role": "assistant",
                "content": "환율을 확인해 볼게요.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "convert_currency", "arguments": {"amount": 100, "from": "USD", "to": "KRW", "메모": "<빠르게> & '정확히'"}}},
                ],
            },
            {"role": "tool", "content": {"amount": 138000, "currency": "KRW"}},
            {"role": "assistant", "content": "100달러는 약 138,000원입니다."},
            {"role": "user", "content": "고마워 🙏"},
        ],
        "tools": [EXCHANGE_TOOL],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "Name three Korean dishes."},
            {"role": "assistant", "content": "Kimchi-jjigae, bibimbap and bulgogi."},
            {"role": "user", "content": "<|eot_id|> is a special token, 알지?"},
        ],
        "tools": None,
        "add_generation_prompt": True,
    },
]

LOGPROB_TEXTS = [
    "오늘은 서울에서 회의가 있습니다. 고객님께 감사드립니다.",
    "이번 분기 매출은 전년 동기 대비 12.5% 증가했습니다. 회의는 3층 대회의실에서 오후 2시 30분에 시작하며, 참석자는 기획팀과 개발팀 담당자입니다.",
]
CHAT_FOR_MODELS = [
    {"role": "system", "content": "짧게 답하세요."},
    {"role": "user", "content": "점심 메뉴 추천해 줘"},
]


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW if tz is None else FIXED_NOW.replace(tzinfo=tz)


def patch_strftime_now():
    """transformers' chat template env defines strftime_now(fmt) as datetime.now().strftime(fmt),
    looking up the module-global `datetime` of transformers.utils.chat_template_utils at call time.
    Replacing that global with a subclass whose now() is fixed pins the template's clock."""
    import transformers.utils.chat_template_utils as ctu

    assert ctu.datetime is _dt.datetime or issubclass(ctu.datetime, _dt.datetime)
    ctu.datetime = _FixedDatetime


def load_hf_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def golden_tokenizer(tok_lib):
    hf = load_hf_tokenizer(TOKDIR)
    out = {"now": FIXED_NOW.strftime("%Y-%m-%d"), "tokenize": [], "encode_with_special": [], "decode": [], "render": []}
    for text in TOKENIZE_TEXTS:
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == tok_lib.encode(text, add_special_tokens=False).ids, text
        out["tokenize"].append({"text": text, "ids": ids})
    for text in ENCODE_WITH_SPECIAL_TEXTS:
        ids = hf.encode(text, add_special_tokens=True)
        assert ids == tok_lib.encode(text, add_special_tokens=True).ids, text
        out["encode_with_special"].append({"text": text, "ids": ids})
    decode_ids = [e["ids"] for e in out["tokenize"][:6]]
    decode_ids += [
        [0] + out["tokenize"][0]["ids"] + [hf.convert_tokens_to_ids(EOT), 2],
        out["tokenize"][17]["ids"],
        # a lone continuation byte of a multi-byte char: decodes to U+FFFD
        [tok_lib.token_to_id("ì")],
        [tok_lib.token_to_id("ì"), tok_lib.token_to_id("ķ")],
        list(range(3, 40)),
    ]
    for ids in decode_ids:
        text = hf.decode(ids, skip_special_tokens=False)
        assert text == tok_lib.decode(ids, skip_special_tokens=False)
        out["decode"].append({"ids": ids, "text": text})
    for case in RENDER_CASES:
        prompt = hf.apply_chat_template(
            copy.deepcopy(case["messages"]),
            tools=copy.deepcopy(case["tools"]),
            add_generation_prompt=case["add_generation_prompt"],
            tokenize=False,
        )
        rec = dict(case)
        rec["prompt"] = prompt
        rec["ids"] = hf.encode(prompt, add_special_tokens=False)
        out["render"].append(rec)
    return out


def _fresh_model(path):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    m.eval()
    return m


def golden_model(spec, cfg, tokenizer, eot_id):
    import torch
    from transformers import GenerationConfig

    path = MODELS / spec["name"]
    dynamic = spec["name"] == "tiny-dynamic"
    model = _fresh_model(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    seqs = [[0] + tokenizer.encode(t, add_special_tokens=False) for t in LOGPROB_TEXTS]
    chat_prompt = tokenizer.apply_chat_template(CHAT_FOR_MODELS, add_generation_prompt=True, tokenize=False)
    chat_ids = tokenizer.encode(chat_prompt, add_special_tokens=False)  # the template emits BOS itself
    assert chat_ids[0] == 0 and chat_ids[1] != 0
    seqs.append(chat_ids)

    out = {
        "model": spec["name"],
        "weights_dtype": spec["dtype"],
        "compute_dtype": "float32",
        "config": {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                                      "num_key_value_heads", "intermediate_size", "vocab_size",
                                      "max_position_embeddings", "tie_word_embeddings")},
        "rope_inv_freq": model.model.rotary_emb.inv_freq.tolist(),
        "rope_attention_scaling": float(model.model.rotary_emb.attention_scaling),
        "logprobs": [],
        "greedy": [],
    }
    if dynamic:
        out["notes"] = (
            "dynamic NTK rope: HF recomputes inv_freq from the largest position id seen in a forward "
            "call once it exceeds max_position_embeddings (32). Each logprobs entry is ONE full forward "
            "over the whole sequence (fresh model), so all positions use the frequencies for that length. "
            "'greedy' uses generate() with the KV cache: keys already in the cache keep the frequencies "
            "they were computed with while each new step uses the frequencies for its own length. "
            "'greedy_no_cache' recomputes the full sequence every step (use_cache=False)."
        )
    last_logits = None
    for ids in seqs:
        if dynamic:
            model = _fresh_model(path)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        vals = [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
        out["logprobs"].append({"ids": ids, "logprobs": vals})
        if last_logits is None:
            last_logits = logits[-1, :10].tolist()
    out["top_logits_last"] = last_logits
    out["top_logits_last_seq"] = 0

    def greedy(prompt_ids, use_cache=True, eos=None, n=20):
        m = _fresh_model(path) if dynamic else model
        gc = GenerationConfig(
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=eos,
            pad_token_id=1,
            bos_token_id=0,
            use_cache=use_cache,
            return_dict_in_generate=True,
            output_logits=True,
        )
        with torch.no_grad():
            res = m.generate(torch.tensor([prompt_ids]), generation_config=gc,
                             attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
        new = res.sequences[0, len(prompt_ids):].tolist()
        gaps = []
        for step_logits in res.logits:
            top2 = torch.topk(step_logits[0].float(), 2).values
            gaps.append(float(top2[0] - top2[1]))
        return new, gaps

    for prompt_ids in (seqs[0], seqs[2]):
        new, gaps = greedy(prompt_ids)
        assert len(new) == 20
        rec = {"prompt_ids": prompt_ids, "max_new_tokens": 20, "ids": new, "top2_gaps": gaps,
               "min_top2_gap": min(gaps)}
        # Manual check: argmax over full forward passes gives the same tokens (not for dynamic + cache).
        if not dynamic:
            cur = list(prompt_ids)
            with torch.no_grad():
                for _ in range(20):
                    cur.append(int(model(torch.tensor([cur])).logits[0, -1].argmax()))
            assert cur[len(prompt_ids):] == new, (spec["name"], cur[len(prompt_ids):], new)
        else:
            nc, nc_gaps = greedy(prompt_ids, use_cache=False)
            rec["greedy_no_cache"] = {"ids": nc, "top2_gaps": nc_gaps, "min_top2_gap": min(nc_gaps)}
        # Stop-token variant: eos list [2, <|eot_id|>, X] where X is the 5th greedy token; generation
        # must stop right after the first X (inclusive).
        stop_tok = new[4]
        eos_list = [2, eot_id, stop_tok]
        stopped, _ = greedy(prompt_ids, eos=eos_list)
        cut = next(i for i, t in enumerate(new) if t in eos_list)
        assert stopped == new[: cut + 1], (stopped, new)
        rec["stops_at_eos"] = {"eos_token_id": eos_list, "ids": stopped}
        out["greedy"].append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main():
    import torch

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    patch_strftime_now()

    tok, n_trained = build_tokenizer()
    write_tokenizer(tok, TOKDIR)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    eot_id = tok.token_to_id(EOT)
    tok_json = json.loads((TOKDIR / "tokenizer.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((TOKDIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    print(f"tokenizer: {n_trained} trained + {len(TAIL_SPECIALS)} appended = {vocab_size}; eot={eot_id}")

    hf_tok = load_hf_tokenizer(TOKDIR)
    assert len(hf_tok) == vocab_size
    _dump_json(GOLDEN / "tokenizer.json", golden_tokenizer(tok))

    summary = []
    for spec in MODEL_SPECS:
        weights = make_weights(spec, vocab_size)
        cfg, stored = write_model_dir(spec, weights, vocab_size, eot_id)
        if spec["gguf"]:
            gpath = MODELS / f"{spec['name']}.gguf"
            write_gguf(spec, cfg, stored, tok_json, tok_cfg, gpath)
            check_gguf(spec, cfg, stored, gpath)
        g = golden_model(spec, cfg, hf_tok, eot_id)
        theta, scaling = rope_params(cfg)
        if scaling is not None and scaling.get("rope_type") == "llama3":
            # GGUF rope_freqs (divisors) must reproduce HF's llama3 inverse frequencies.
            hd = spec["config"]["head_dim"]
            base = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            factors = torch.from_numpy(llama3_rope_factors(theta, hd, scaling))
            assert torch.allclose(base / factors, torch.tensor(g["rope_inv_freq"]), rtol=1e-6, atol=0)
        _dump_json(GOLDEN / f"{spec['name']}.json", g)
        mins = [r["min_top2_gap"] for r in g["greedy"]]
        uniq = [len(set(r["ids"])) for r in g["greedy"]]
        summary.append((spec["name"], mins, uniq))
        print(f"{spec['name']}: min top-2 gaps {mins}, distinct greedy tokens {uniq}")
    tmp = TESTDATA / "tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    for name, mins, uniq in summary:
        assert min(mins) > 1e-3, (name, mins)
        assert min(uniq) > 1, (name, uniq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
