"""The pure attribution core: channels, numbers, call records and the call state machine.

Nothing here does I/O, logs or knows about asyncio: adapters (agi, ami, store)
feed it data and time (`now`, `ts`) and persist what it returns.
"""
