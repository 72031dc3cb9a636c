"""Evaluate & Export tab (placeholder until its issue lands)."""
import gradio as gr


def create_tab(session) -> dict:
    gr.Markdown("*Evaluate & Export: coming soon.*")
    return {}
