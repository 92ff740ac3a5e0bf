"""Prompt wording (MiniOneRec / SIDReasoner research code) and the ONE function that renders a
prompt with the chat template, used for training and for inference alike.

The research code renders the empty think block differently in training and evaluation (a known
bug); here `render_prompt` is the only place a prompt is rendered, so both match.
"""

from __future__ import annotations

from collections.abc import Sequence

EMPTY_THINK = "<think>\n\n</think>\n\n"

SID_HISTORY_TO_SID = (
    "The user has interacted with items {history} in chronological order. "
    "Can you predict the next possible item that the user may expect?"
)
SID_HISTORY_TO_TITLE = (
    "The user has interacted with items {history} in chronological order. "
    "Can you predict the title of the next possible item that the user may expect?"
)
TITLE_TO_SID = "Which item has the title: {title}?"
SID_TO_TITLE = 'What is the title of item "{sid}"?'
TITLE_HISTORY_TO_TITLE = (
    "Given the title sequence of user historical interactive items: {titles}, "
    "can you recommend a suitable next item for the user? Tell me the title of the item."
)
TITLE_HISTORY_TO_SID = (
    "Given the title sequence of user historical interactive items: {titles}, "
    "can you recommend a suitable next item for the user? Tell me the item ID."
)
REASONING_SUFFIX = (
    " Let's think step by step before making recommendation. Directly output the item SID after thinking."
)

ALL_WORDING = [SID_HISTORY_TO_SID, SID_HISTORY_TO_TITLE, TITLE_TO_SID, SID_TO_TITLE,
               TITLE_HISTORY_TO_TITLE, TITLE_HISTORY_TO_SID, REASONING_SUFFIX]


def sid_history(sids: Sequence[str]) -> str:
    return ", ".join(sids)


def title_history(titles: Sequence[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles)


def next_sid_question(history_sids: Sequence[str], reasoning: bool = False) -> str:
    """The Stage 1 next-SID question; with `reasoning`, the Stage 2 (thinking) variant."""
    text = SID_HISTORY_TO_SID.format(history=sid_history(history_sids))
    return text + REASONING_SUFFIX if reasoning else text


def render_prompt(tokenizer, user_text: str, thinking: bool = False) -> str:
    """The chat-template prompt up to where the model starts answering.

    thinking=False ends with the empty think block "<think>\\n\\n</think>\\n\\n" (Qwen3's
    enable_thinking=False rendering); thinking=True ends right after "<|im_start|>assistant\\n", so the
    model writes its own "<think>…</think>". Base tokenizers whose template ignores
    `enable_thinking` get the empty block appended, so the rendering is the same for every model.
    """
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=thinking,
    )
    if not thinking and not text.endswith(EMPTY_THINK):
        text += EMPTY_THINK
    return text


def reasoning_response(reasoning: str, target_sid: str) -> str:
    """Stage 2 target: `<think>\\n{reasoning}\\n</think>\\n\\n{SID}`."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{target_sid}"
