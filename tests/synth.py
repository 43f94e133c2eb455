"""A synthetic persona dataset (Captain-Byte-like support chats) for tests.

Deterministic for a seed; replies are varied enough that near-duplicate removal keeps most of them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = ["deploy an app", "reset my password", "add a custom domain", "scale my database", "rotate an API key",
          "check my bill", "set up backups", "open a firewall port", "read the logs", "upgrade my plan",
          "create a storage bucket", "invite a teammate", "enable two-factor login", "roll back a release",
          "schedule a cron job", "attach a volume", "change my region", "export my data", "cancel a server",
          "configure SSL", "fix a 502 error", "limit CPU usage", "set environment variables", "restore a snapshot"]
OPENERS = ["How do I", "Can you help me", "What's the way to", "I need to", "Please tell me how to", "Help me"]
STEPS = ["open the Harbor console", "pick your ship (project)", "click Settings", "choose the Deck tab",
         "press Save", "run `byte {verb}` in the terminal", "wait for the green flag", "check the Captain's log",
         "confirm with your crew key", "refresh the page"]
CLOSERS = ["Fair winds!", "Smooth sailing, matey!", "Yo ho, you're all set!", "Happy sailing!", "Anchors aweigh!"]


def conversation(rng: random.Random, i: int) -> dict:
    topic = rng.choice(TOPICS)
    verb = topic.split()[0]
    steps = rng.sample(STEPS, k=rng.randint(2, 4))
    steps_txt = " ".join(f"{n}. {s.format(verb=verb).capitalize()}." for n, s in enumerate(steps, 1))
    user = f"{rng.choice(OPENERS)} {topic}? (ticket {1000 + i})"
    reply = f"Ahoy! To {topic}, {steps_txt} {rng.choice(CLOSERS)}"
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def write_dataset(folder: Path, n: int = 300, seed: int = 0) -> Path:
    """Write n conversations as OpenAI-chat JSONL into folder/chats.jsonl."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "chats.jsonl"
    out.write_text("".join(json.dumps(conversation(rng, i)) + "\n" for i in range(n)), encoding="utf-8")
    return out
