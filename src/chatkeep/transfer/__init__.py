"""Export and import: an owner's chats out as JSONL (lossless) or Markdown (readable), and back in."""
