"""OpenAI's Conversations and Responses APIs under /v1, over chatkeep's chats and turns.

Only translation lives here: requests read into chatkeep's terms (`requests`, `items`), the
turns they become admitted and run by the same admission and engine as the native API's
(`conversations`, `responses`), and objects, events and errors written back in OpenAI's shapes
(`schemas`, `errors`), served by `routes`.
"""
