"""Prompt wording (the SIDReasoner research code's, with its system messages) and the ONE function
that renders a prompt with the chat template, used for training and for inference alike.

The research code renders the empty think block differently in training and evaluation (a known
bug); here `render_prompt` (through `render_messages`) is the only place a prompt is rendered, so both
match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

EMPTY_THINK = "<think>\n\n</think>\n\n"
# The research code's evaluation appends this after the generation prompt (one "\n" inside, not two).
RESEARCH_EMPTY_THINK = "<think>\n</think>\n\n"

# Every task's wording is the research code's, word for word, its typos included ("palyed",
# "recetenly", "{category}s" after a plural phrase): the model is trained and evaluated on exactly the
# text the paper's model saw. Each chat prompt is a system message plus a user message.

# The system messages open with the Alpaca preamble; what follows it (and the spaces and line breaks
# around it) differs per task, as in the research code.
PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
SYSTEM_SID_HISTORY_TO_SID = PREAMBLE + " Can you predict the next possible item that the user may expect?"
SYSTEM_ITEM_IDENTIFICATION = PREAMBLE + " \nAnswer the question about item identification.\n"
SYSTEM_NEXT_ITEM = PREAMBLE + "\nCan you recommend the next item for the user based on their interaction history?\n"
SYSTEM_TITLE_HISTORY_TO_SID = (
    PREAMBLE + " \nBased on the user's historical interaction with item titles, predict "
    "the semantic ID of the next item they may expect.\n"
)
SYSTEM_TITLE_HISTORY_TO_TITLE = PREAMBLE + "\n{instruction}\n \n"
SYSTEM_EVAL_NEXT_SID = PREAMBLE + " \nCan you predict the next possible item that the user may expect?\n"

# The title-history-to-title task's system message carries one of these, drawn per example with
# Python's random.Random(seed).randint(0, 10) in example order, as the research code draws them.
TITLE_HISTORY_INSTRUCTIONS = [
    "Given a list of {category} the user recetenly enjoy, please write a new {category} that the user may bought",
    "Considering the {category} that has recently captured the user's interest, kindly create a compilation of "
    "other {category} that the user might have played prior to this.",
    "Based on the user's current gaming preference, please draft a list of potential {category} they may have "
    "experienced beforehand.",
    "Reflecting on the {category} the user has taken pleasure in recently, we request that you formulate a list of "
    "{category} that may have preceded the user's current enjoyment.",
    "In light of the recent gaming enjoyment expressed by the user, please assemble a list of {category} that could "
    "potentially include past titles the user has engaged with.",
    "Taking into account the {category} that has lately provided enjoyment to the user, please put together an "
    "inventory of {category} the user might have explored previously.",
    "Given the user's newfound enjoyment of a particular {category}, would you kindly generate a roster of other "
    "{category} that might resonate with their past gaming experiences?",
    "In response to the user's recent fondness for a specific {category}, we seek your assistance in listing "
    "possible {category} the user may have delighted in earlier.",
    "With respect to the {category} currently enjoyed by the user, please compile a suggestive list of {category} "
    "they may have played in the past.",
    "Bearing in mind the {category} that the user has recently been enthralled by, please construct a catalog of "
    "other {category} that the user potentially partook in beforehand.",
    "In relation to the user's recent entertainment with a given {category}, it would be appreciated if you could "
    "curate a list of {category} that might form part of the user's previous gaming history.",
]

# The dataset's category (data.category) as the title-history prompts name it; any other category is "items".
CATEGORY_PHRASES = {
    "Industrial_and_Scientific": "industrial and scientific items",
    "Office_Products": "office products",
    "Toys_and_Games": "toys and games",
    "Sports": "sports and outdoors",
    "Books": "books",
    "Video_Games": "video games",
}
DEFAULT_CATEGORY_PHRASE = "items"

# User messages. {history}: SIDs joined by ", "; {titles}: quoted titles joined by ", " (title history to
# SID) or by ",\t" (title history to title).
SID_HISTORY_TO_SID = (
    "The user has interacted with items {history} in chronological order. "
    "Can you predict the next possible item that the user may expect?"
)
SID_HISTORY_TO_TITLE = (
    "The user has sequentially interacted with items {history}. "
    "Can you recommend the next item for him? Tell me the title of the item?"
)
TITLE_TO_SID = "Which item has the title: {title}?"
SID_TO_TITLE = 'What is the title of item "{sid}"?'
TITLE_HISTORY_TO_TITLE = "The user has palyed the following {category}s before: {titles}"
TITLE_HISTORY_TO_SID = (
    "The user has interacted with the following {category} items in chronological order: {titles}. "
    "Can you predict the next item the user may expect?"
)
REASONING_SUFFIX = (
    " Let's think step by step before making recommendation. Directly output the item SID after thinking."
)
# Stage 2, Stage 3 (RL) and the thinking evaluation.
REASONING_QUESTION = (
    "The user has sequentially interacted with items {history}. Can you recommend the next item for him?"
    + REASONING_SUFFIX
)
# The non-thinking evaluation asks the next-SID question in other words than Stage 1 trains it with,
# as the research code's evaluation does.
EVAL_SID_HISTORY_TO_SID = (
    "Can you predict the next possible item the user may expect, given the following chronological interaction "
    "history: {history}"
)

# The system message of each task whose system message does not vary (Example's default).
SYSTEM_BY_TASK = {
    "sid_history_to_sid": SYSTEM_SID_HISTORY_TO_SID,
    "title_to_sid": SYSTEM_ITEM_IDENTIFICATION,
    "sid_to_title": SYSTEM_ITEM_IDENTIFICATION,
    "sid_history_to_title": SYSTEM_NEXT_ITEM,
    "title_history_to_sid": SYSTEM_TITLE_HISTORY_TO_SID,
    "reasoning": SYSTEM_NEXT_ITEM,
}

ALL_WORDING = [
    SYSTEM_SID_HISTORY_TO_SID,
    SYSTEM_ITEM_IDENTIFICATION,
    SYSTEM_NEXT_ITEM,
    SYSTEM_TITLE_HISTORY_TO_SID,
    SYSTEM_EVAL_NEXT_SID,
    *(SYSTEM_TITLE_HISTORY_TO_TITLE.format(instruction=i) for i in TITLE_HISTORY_INSTRUCTIONS),
    SID_HISTORY_TO_SID,
    SID_HISTORY_TO_TITLE,
    TITLE_TO_SID,
    SID_TO_TITLE,
    TITLE_HISTORY_TO_TITLE,
    TITLE_HISTORY_TO_SID,
    REASONING_QUESTION,
    EVAL_SID_HISTORY_TO_SID,
]


# A history entry is SID code tokens and nothing else: text from data never reaches a prompt this way.
_SID_ONLY = re.compile(r"(?:<[a-z]_\d+>)+")


def sid_history(sids: Sequence[str]) -> str:
    for sid in sids:
        if not isinstance(sid, str) or not _SID_ONLY.fullmatch(sid):
            raise ValueError(f"history entry {sid!r} is not a SID (only SID code tokens like <a_12> may be in it)")
    return ", ".join(sids)


def title_history(titles: Sequence[str]) -> str:
    """Quoted titles joined by ", " (the title-history-to-SID task)."""
    return ", ".join(f'"{t}"' for t in titles)


def title_history_tabbed(titles: Sequence[str]) -> str:
    """Quoted titles joined by ",\\t" (the title-history-to-title task)."""
    return ",\t".join(f'"{t}"' for t in titles)


def category_phrase(category: str) -> str:
    return CATEGORY_PHRASES.get(category, DEFAULT_CATEGORY_PHRASE)


def title_history_system(instruction_index: int, category_text: str) -> str:
    """The title-history-to-title system message with instruction `instruction_index` (0-10)."""
    instruction = TITLE_HISTORY_INSTRUCTIONS[instruction_index].format(category=category_text)
    return SYSTEM_TITLE_HISTORY_TO_TITLE.format(instruction=instruction)


def next_sid_question(history_sids: Sequence[str], reasoning: bool = False) -> str:
    """The Stage 1 next-SID question (system message SYSTEM_SID_HISTORY_TO_SID); with `reasoning`, the
    Stage 2 / RL / thinking-evaluation question (system message SYSTEM_NEXT_ITEM)."""
    template = REASONING_QUESTION if reasoning else SID_HISTORY_TO_SID
    return template.format(history=sid_history(history_sids))


def evaluation_prompt(history_sids: Sequence[str], thinking: bool, wording: str = "research") -> tuple[str, str]:
    """(system, user) of the evaluation's prompt: when thinking, the Stage 2 question; else the research
    code's evaluation wording (`research`, worded unlike any training task), or the Stage 1 next-SID
    question the model was trained on (`training`)."""
    if thinking:
        return SYSTEM_NEXT_ITEM, next_sid_question(history_sids, reasoning=True)
    if wording == "training":
        return SYSTEM_SID_HISTORY_TO_SID, next_sid_question(history_sids)
    return SYSTEM_EVAL_NEXT_SID, EVAL_SID_HISTORY_TO_SID.format(history=sid_history(history_sids))


def rl_messages(history_sids: Sequence[str]) -> list[dict]:
    """The chat messages of a Stage 3 prompt (verl's `prompt` column)."""
    return chat_messages(next_sid_question(history_sids, reasoning=True), SYSTEM_NEXT_ITEM)


def chat_messages(user_text: str, system: str | None = None) -> list[dict]:
    """[system message (when given), user message]."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": user_text}]


def render_prompt(
    tokenizer, user_text: str, thinking: bool = False, *, empty_think: str = "training", system: str | None = None
) -> str:
    """The chat-template prompt up to where the model starts answering: the `system` message (when
    given) and the user message `user_text`, rendered by `render_messages`.

    thinking=False ends with the empty think block "<think>\\n\\n</think>\\n\\n" (Qwen3's
    enable_thinking=False rendering); thinking=True ends right after "<|im_start|>assistant\\n", so the
    model writes its own "<think>…</think>". Base tokenizers whose template ignores
    `enable_thinking` get the empty block appended, so the rendering is the same for every model.
    empty_think="research" (evaluation only) ends with the research evaluation's block
    "<think>\\n</think>\\n\\n" instead.
    """
    if empty_think not in ("training", "research"):
        raise ValueError(f"empty_think must be 'training' or 'research', got {empty_think!r}")
    text = render_messages(tokenizer, chat_messages(user_text, system), thinking)
    if not thinking and empty_think == "research":
        text = text[: -len(EMPTY_THINK)] + RESEARCH_EMPTY_THINK
    return text


def render_messages(tokenizer, messages: Sequence[dict], thinking: bool = False) -> str:
    """The chat template's generation prompt after `messages`.

    thinking=False ends with the empty think block "<think>\\n\\n</think>\\n\\n" (Qwen3's
    enable_thinking=False rendering); thinking=True ends right after "<|im_start|>assistant\\n" (Qwen3's
    default), so the model writes its own "<think>…</think>". Base tokenizers whose template ignores
    `enable_thinking` get the empty block appended, so the rendering is the same for every model.
    """
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=thinking,
    )
    if not thinking and not text.endswith(EMPTY_THINK):
        text += EMPTY_THINK
    return text


def render_chat_prompt(tokenizer, messages: Sequence[dict], thinking: bool = False) -> str:
    """`render_prompt` for a [system?, user] message list (a Stage 3 row's `prompt`)."""
    roles = [m["role"] for m in messages]
    if roles not in (["user"], ["system", "user"]):
        raise ValueError(f"expected [system?, user] messages, got roles {roles}")
    system = messages[0]["content"] if roles[0] == "system" else None
    return render_prompt(tokenizer, messages[-1]["content"], thinking, system=system)


_ANSWER_MARK = "\x1fSIDREASONER-ANSWER\x1f"
_TURN_END: dict[tuple[str | None, str | None], str] = {}


def turn_end(tokenizer) -> str:
    """What the chat template writes after an assistant answer ("<|im_end|>\\n" for Qwen3): a chat
    example's answer is followed by it, as the research code's training sequences (the whole rendered
    conversation) are. Templates that do not show it (or no template): the eos token."""
    template = getattr(tokenizer, "chat_template", None)
    key = (template if isinstance(template, str) else repr(template), tokenizer.eos_token)
    if key not in _TURN_END:
        end = ""
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "?"}, {"role": "assistant", "content": _ANSWER_MARK}],
                tokenize=False,
                add_generation_prompt=False,
            )
            if _ANSWER_MARK in text:
                end = text[text.rindex(_ANSWER_MARK) + len(_ANSWER_MARK) :]
        except (ValueError, TypeError, AttributeError):
            end = ""
        if not tokenizer.eos_token or not end.startswith(tokenizer.eos_token):
            end = tokenizer.eos_token or ""
        _TURN_END[key] = end
    return _TURN_END[key]


def reasoning_response(reasoning: str, target_sid: str) -> str:
    """Stage 2 target: `<think>\\n{reasoning}\\n</think>\\n\\n{SID}`."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{target_sid}"
