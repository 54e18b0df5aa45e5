"""A seeded, randomly initialised Qwen3-VL of a few tens of MB with a locally trained tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    AddedToken,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from gdo_core import demo

# Qwen2.5 / Qwen3 added tokens at their real ids (151643 onwards); the flag says "special".
QWEN_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
QWEN_TOKEN_IDS: dict[str, int] = {content: token_id for token_id, content, _ in QWEN_ADDED_TOKENS}
FIRST_ADDED_ID = QWEN_ADDED_TOKENS[0][0]
QWEN_VOCAB_SIZE = 151936  # the embedding rows of every Qwen3-VL checkpoint
BPE_VOCAB_SIZE = 4096
# Placeholder tokens fill ids [n_bpe, 151643) so the added tokens land on Qwen's ids.
FILLER_TOKEN = "<|reserved_{}|>"

TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
HEAD_DIM = 16
MROPE_SECTION = [2, 3, 3]  # sums to HEAD_DIM / 2
VISION_HIDDEN = 64
VISION_DEPTH = 2
VISION_HEADS = 4
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# Pixel budgets: a 64x64 frame stays 64x64 (no upscaling) and big inputs stay cheap on a CPU.
IMAGE_MIN_PIXELS = 32 * 32
IMAGE_MAX_PIXELS = 256 * 256
VIDEO_MIN_PIXELS = 2 * 32 * 32
VIDEO_MAX_PIXELS = 64 * 64 * 64
# Tied embeddings make a default-initialised model echo its last input token (loss ~30, answers
# "\n\n\n"). Wider text layers let the context dominate the residual stream, and real-token rows
# wide enough to beat the ~148k zero filler rows keep sampled text real: answer loss ~10.
TEXT_INIT_STD = 0.2
REAL_TOKEN_EMBED_STD = 0.35

# Qwen-style ChatML template; images and videos are content-list entries rendered as vision pads.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id is defined and add_vision_id -%}"
    "Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item.type == 'video' or 'video' in item -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id is defined and add_vision_id -%}"
    "Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item -%}{{- item.text -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{{- render_content(message.content) -}}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_ENGLISH_CORPUS = """\
The quick brown fox jumps over the lazy dog.
A small model reads short questions and gives short answers.
Look at the picture and answer the question. Watch the video and describe what happens.
What is shown in the image? The image shows a few simple shapes on a plain background.
Which object moves first, and what happens next? After that, the other object starts to move.
How many objects are there? There are two objects, one on the left and one on the right.
Where is it located? It is in the top left corner, near the middle of the frame.
Please answer with a single word. Answer with the option's letter from the given choices directly.
Decide if the question requires temporal reasoning over multiple frames.
Answer only one word: Temporal or Static. Question:
The scene stays still for a moment, then the shape slides across the frame and stops.
Before the end of the clip, the circle moves up; later, the square moves down.
During the video the camera does not move. Finally, every shape is visible at once.
Yes. No. Maybe. It depends on the sequence of events and the transition between frames.
A person is holding a cup of tea in a kitchen while a cat sleeps on the chair.
Describe the image in detail, including colours, positions and the number of objects.
This is a diagram of a simple process with three steps connected by arrows.
In the first step the data are collected, in the second step they are cleaned.
Subtract all red objects. How many objects are left? The answer is three.
The chart compares the values of four groups; the largest bar belongs to the second group.
Read the text in the image and summarise it in one sentence.
She walked to the station, bought a ticket and waited for the train to arrive.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 20 24 32 48 64 96 100 1000.
Punctuation and symbols: , . ; : ! ? ' " ( ) [ ] { } - + = * / % & # @ < > | _ ~ ^ $
"""

# Common English words, so the trained vocabulary covers ordinary text, not only the demo world.
_COMMON_WORDS = """
about above across act action add after afternoon again against age ago agree air all allow almost
alone along already also although always among amount and angle animal another answer any appear
apple area arm army around arrive art as ask at attention autumn average away baby back bad bag
ball bank base basket bath bear beautiful because become bed been before begin behind believe
below beside best better between big bird birth bit black blank block blood blow blue board boat
body bone book border born both bottle bottom box boy brain branch bread break bridge bright bring
broad brother brown build burn business busy but buy by cake call came camera can capital captain
car card care carry case cat catch cause cell centre century certain chair chance change character
charge chart check chief child children choose church circle city class clean clear climb clock
close cloth cloud coast coat cold collect colony colour column come common company compare
complete condition connect consider contain continue control cook cool copy corn corner correct
cost cotton could count country course cover cow crease create crop cross crowd cry current cut
dad dance danger dark day dead deal dear death decide decimal deep degree depend describe desert
design detail develop diagram dictionary did differ difficult direct discuss distant divide doctor
does dog dollar done door double down draw dream dress drink drive drop dry duck during each ear
early earth ease east eat edge effect egg eight either electric element else end enemy energy
engine enough enter equal equate even evening event ever every exact example except excite
exercise expect experience experiment eye face fact fair fall family famous far farm fast father
fear feed feel feet fell few field fig fight figure fill final find fine finger finish fire first
fish fit five flat floor flow flower fly follow food foot for force forest form forward found four
fraction free fresh friend from front fruit full fun game garden gas gather gave general gentle
get girl give glad glass go gold gone good got govern grand grass great green grew ground group
grow guess guide gun had hair half hand happen happy hard has hat have he head hear heard heart
heat heavy held help her here high hill him his history hit hold hole home hope horse hot hour
house how huge human hundred hunt hurry idea if imagine in inch include indicate industry insect
instant instrument interest invent iron is island it job join joy jump just keep kept key kind
king kitchen knew know lady lake land language large last late laugh law lay lead learn least
leave led left leg length less let letter level lie life lift light like line liquid list listen
little live locate long look lost lot loud love low machine made magnet main major make man many
map mark market mass master match material matter may me mean measure meat meet melody metal
method middle might mile milk million mind mine minute miss mix modern molecule moment money month
moon more morning most mother motion mount mountain mouth move much multiply music must my name
nation natural nature near necessary neck need neighbour never new next night nine noise none noon
nor north nose note nothing notice noun now number numeral object observe ocean off offer office
often oil old once one only open operate opposite or order organ original other our out over own
oxygen page paint pair paper paragraph parent part particular party pass past path pattern pay
people perhaps period person picture piece pitch place plain plan plane planet plant play please
plural poem point pole poor populate port pose position possible post pound power practice prepare
present press pretty print probable problem process produce product proper property protect prove
provide pull push put quart question quick quiet quite race radio rail rain raise ran range rather
reach read ready real reason receive record region remember repeat reply represent require rest
result rich ride right ring rise river road rock roll room root rope rose round row rub rule run
safe said sail salt same sand save saw say scale school science score sea search season seat
second section see seed seem segment select self sell send sense sentence separate serve set
settle seven several shall shape share sharp sheet shell shine ship shoe shop shore short should
shoulder shout show side sight sign silent silver similar simple since sing single sister sit six
size skill skin sky sleep slip slow small smell smile snow so soft soil soldier solution solve
some son song soon sound south space speak special speech speed spell spend spoke spot spread
spring square stand star start state station stay stead steam steel step stick still stone stood
stop store story straight strange stream street stretch string strong student study subject
substance subtract success such sudden suffix sugar suggest suit summer sun supply support sure
surface surprise swim syllable symbol system table tail take talk tall teach team teeth tell
temperature ten term test than thank that the their them then there these thick thin thing think
third this those though thought thousand three through throw thus tie time tiny tire together told
tone too took tool top total touch toward town track trade train travel tree triangle trip trouble
truck true try tube turn twenty two type under unit until up upon us use usual valley value vary
verb very view village visit voice vowel wait walk wall want war warm wash watch water wave way we
wear weather week weight well went were west what wheel when where whether which while white who
whole whose why wide wife wild will win wind window wing winter wire wish with woman wonder wood
word work world would write written wrong wrote yard year yellow yes yet you young your zero
"""


def _demo_corpus() -> list[str]:
    """Sentences in the demo world's vocabulary (colours, shapes, directions, numbers)."""
    lines: list[str] = []
    for colour in demo.COLOURS:
        for shape in demo.SHAPES:
            lines.append(f"What colour is the {shape}? The {shape} is {colour}.")
            lines.append(f"What shape is the {colour} object? It is a {colour} {shape}.")
            lines.append(f"How many {shape}s are there in the image? There are two {shape}s.")
            for direction in demo.DIRECTIONS:
                lines.append(
                    f"In which direction does the {colour} {shape} move during the video? "
                    f"The {colour} {shape} moves {direction}."
                )
    for background in demo.BACKGROUNDS:
        lines.append(f"The image shows three shapes on a {background} background.")
    lines.extend(
        f"A. {x}\nB. {y}\nC. left\nD. right" for x, y in zip(demo.COLOURS, demo.SHAPES * 2)
    )
    lines.extend(demo.NUMBER_WORDS)
    lines.extend(demo.IMAGE_SOURCES + demo.VIDEO_SOURCES)
    return lines


def _qwen_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Qwen2's pre-tokenizer: its split regex, then byte-level mapping."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_bpe(vocab_size: int = BPE_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab and merges trained on the built-in corpus (deterministic)."""
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _qwen_pre_tokenizer()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    words = _COMMON_WORDS.split()
    # Each word alone, capitalised and after a space, as it occurs in running text.
    corpus = (
        _ENGLISH_CORPUS.splitlines()
        + _demo_corpus()
        + [f"{w} {w.capitalize()} {w}s the {w}." for w in words]
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(state["vocab"])
    pairs = (m.split(" ") if isinstance(m, str) else m for m in state["merges"])
    return vocab, [(a, b) for a, b in pairs]


def build_tokenizer() -> tuple[Qwen2Tokenizer, int]:
    """A Qwen2Tokenizer whose added tokens sit at the real Qwen ids, and its trained BPE size."""
    vocab, merges = train_bpe()
    n_bpe = len(vocab)
    if sorted(vocab.values()) != list(range(n_bpe)):
        raise RuntimeError("trained BPE vocab ids are not contiguous")
    for i in range(n_bpe, FIRST_ADDED_ID):
        vocab[FILLER_TOKEN.format(i)] = i
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        # <|endoftext|> first, so that the tokenizer's own registration puts it on 151643.
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        errors="replace",
    )
    for token_id, content, special in QWEN_ADDED_TOKENS:
        if tokenizer.convert_tokens_to_ids(content) == token_id:
            continue
        tokenizer.add_tokens(
            [AddedToken(content, special=special, normalized=False)], special_tokens=special
        )
        got = tokenizer.convert_tokens_to_ids(content)
        if got != token_id:
            raise RuntimeError(f"{content} landed on id {got}, expected {token_id}")
    # As in Qwen3-VL: a chat turn ends generation, <|endoftext|> pads.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer, n_bpe


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen3VLProcessor:
    """Qwen3-VL processor with small pixel budgets (64x64 frames are kept as they are)."""
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS},
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS},
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        fps=2,
        min_frames=2,
        max_frames=64,
        cap_pixels_per_frame=False,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config() -> Qwen3VLConfig:
    """The tiny Qwen3-VL configuration (text hidden 64, 2 layers; vision depth 2)."""
    ids = QWEN_TOKEN_IDS
    text_config = {
        "vocab_size": QWEN_VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 4 * TEXT_HIDDEN,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 4096,
        "initializer_range": TEXT_INIT_STD,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 500000.0,
            "mrope_section": MROPE_SECTION,
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": VISION_DEPTH,
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": 4 * VISION_HIDDEN,
        "num_heads": VISION_HEADS,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "out_hidden_size": TEXT_HIDDEN,
        "num_position_embeddings": 256,  # a 16x16 learned grid, bilinearly resampled per image
        "deepstack_visual_indexes": [0, 1],  # one per text layer, as in the real model
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _init_model(config: Qwen3VLConfig, seed: int, n_bpe: int) -> Qwen3VLForConditionalGeneration:
    """Build the model with seeded weights, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
        emb = model.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            # Filler rows are zero (logit 0); real and special tokens get wide random rows.
            emb.zero_()
            emb[:n_bpe] = torch.randn(n_bpe, emb.shape[1], generator=gen) * REAL_TOKEN_EMBED_STD
            n_added = len(QWEN_ADDED_TOKENS)
            emb[FIRST_ADDED_ID : FIRST_ADDED_ID + n_added] = (
                torch.randn(n_added, emb.shape[1], generator=gen) * REAL_TOKEN_EMBED_STD
            )
    model.tie_weights()
    model.generation_config.eos_token_id = [
        QWEN_TOKEN_IDS["<|im_end|>"],
        QWEN_TOKEN_IDS["<|endoftext|>"],
    ]
    model.generation_config.pad_token_id = QWEN_TOKEN_IDS["<|endoftext|>"]
    return model.eval()


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build and save the tiny Qwen3-VL (model, tokenizer, processor) into out_dir; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, n_bpe = build_tokenizer()
    processor = build_processor(tokenizer)
    model = _init_model(tiny_config(), seed, n_bpe)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the weight files' bytes, in sorted name order."""
    root = Path(model_dir)
    config = root / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{root}: no config.json, not a model directory")
    weights = sorted(
        p for p in root.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
    if not weights:
        raise FileNotFoundError(f"{root}: no *.safetensors or *.bin weight files")
    digest = hashlib.sha256()
    for path in (config, *weights):
        # The name goes in too, so moving bytes between shards changes the fingerprint.
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
