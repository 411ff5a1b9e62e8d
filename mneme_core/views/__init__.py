"""What the dashboard and the report show, without Streamlit: token rendering with
escaping, figures, filters and share links for the latents table, triage marks, and the
static HTML report.
"""
