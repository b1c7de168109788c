"""Summaries: a chat's summary for people (`chat`) and its rolling summary for the model
(`rolling`), both made by one `Summarizer` (`summarizer`): the LLM, or extractively offline.
"""
