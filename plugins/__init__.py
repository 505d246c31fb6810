"""Bundled plugins: the behaviour of storyloom, one module per plugin.

This package declares what it bundles (as llm's ``default_plugins`` do); the
plugin manager in core registers these by module name and names none itself.
"""

#: Bundled plugins: short name (what ``-p no:NAME`` blocks) -> module.
DEFAULT_PLUGINS = {
    "simulated": "storyloom.plugins.simulated",
    "openai": "storyloom.plugins.providers.openai",
    "anthropic": "storyloom.plugins.providers.anthropic",
    "gemini": "storyloom.plugins.providers.gemini",
    "jobtypes": "storyloom.plugins.jobtypes",
    "prompts": "storyloom.plugins.prompts",
    "retry": "storyloom.plugins.retry",
    "routing": "storyloom.plugins.routing",
    "outputs": "storyloom.plugins.outputs",
    "progress": "storyloom.plugins.progress",
    "terminal": "storyloom.plugins.terminal",
    "eventlog": "storyloom.plugins.eventlog",
    "webhook": "storyloom.plugins.webhook",
    "failure_policy": "storyloom.plugins.failure_policy",
    "reports": "storyloom.plugins.reports",
    "sqlite": "storyloom.plugins.stores.sqlite",
    "postgresql": "storyloom.plugins.stores.postgresql",
}
#: Without these the kernel cannot dispatch at all (nor run without a store),
#: so ``-p no:`` cannot block them.
ESSENTIAL_PLUGINS = ("retry", "routing", "sqlite")
