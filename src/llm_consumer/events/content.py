"""The structured `content` of each text kind: what the model must answer, validated here.

Lengths and counts are bounded so that a small model under a JSON grammar always closes its
answer, and so that results stay a sensible size for peers to store.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_consumer.events.requests import ContentKind

Short = Field(min_length=1, max_length=200)
Medium = Field(min_length=1, max_length=1200)
Long = Field(min_length=1, max_length=4000)


class _Content(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _items(max_items: int) -> object:
    return Field(min_length=1, max_length=max_items)


class CharacterBackstory(_Content):
    personality_traits: list[str] = _items(4)  # type: ignore[assignment]
    ideals: list[str] = _items(3)  # type: ignore[assignment]
    bonds: list[str] = _items(3)  # type: ignore[assignment]
    flaws: list[str] = _items(3)  # type: ignore[assignment]
    background: str = Long
    character_arc: str = Medium


class CombatAction(_Content):
    name: str = Short
    description: str = Medium


class CharacterCombat(_Content):
    strategy: str = Medium
    actions: list[CombatAction] = _items(6)  # type: ignore[assignment]
    tactical_analysis: str = Medium


class CharacterEquipment(_Content):
    name: str = Short
    history: str = Long
    visual_description: str = Medium
    magic_effects: list[str] = Field(max_length=6)


class PlotAct(_Content):
    title: str = Short
    summary: str = Medium


class CampaignPlot(_Content):
    title: str = Short
    hook: str = Medium
    acts: list[PlotAct] = _items(5)  # type: ignore[assignment]
    climax: str = Medium
    resolution: str = Medium


class CampaignQuest(_Content):
    title: str = Short
    quest_giver: str = Short
    objective: str = Medium
    steps: list[str] = _items(8)  # type: ignore[assignment]
    complications: list[str] = Field(max_length=5)
    rewards: list[str] = _items(5)  # type: ignore[assignment]


class CampaignEvent(_Content):
    order: int = Field(ge=1, le=50)
    title: str = Short
    description: str = Medium


class CampaignEvents(_Content):
    events: list[CampaignEvent] = _items(12)  # type: ignore[assignment]


class WorldLocation(_Content):
    name: str = Short
    description: str = Long
    notable_features: list[str] = _items(6)  # type: ignore[assignment]
    inhabitants: list[str] = Field(max_length=6)
    adventure_hooks: list[str] = Field(max_length=4)


class DialogueLine(_Content):
    speaker: str = Short
    line: str = Medium
    intent: str = Short


class NpcDialogue(_Content):
    lines: list[DialogueLine] = _items(12)  # type: ignore[assignment]


class WorldEnvironment(_Content):
    setting: str = Medium
    weather: str = Short
    sensory_details: list[str] = _items(6)  # type: ignore[assignment]
    hazards: list[str] = Field(max_length=5)
    atmosphere: str = Medium


class ThemedText(_Content):
    text: str = Field(min_length=1, max_length=8000)
    changes: list[str] = Field(max_length=8)


class ElementFinding(_Content):
    element: str = Short
    assessment: str = Medium
    score: float = Field(ge=0, le=1)


class ThemeAnalysis(_Content):
    theme_category: str = Short
    confidence: float = Field(ge=0, le=1)
    elements: list[ElementFinding] = _items(10)  # type: ignore[assignment]
    recommendations: list[str] = Field(max_length=8)


class Finding(_Content):
    severity: Literal["info", "warning", "error"]
    message: str = Medium
    field: str | None = Field(None, max_length=200)


class ContentValidation(_Content):
    valid: bool
    score: float = Field(ge=0, le=1)
    issues: list[Finding] = Field(max_length=12)


class ChatAnswer(_Content):
    """The assistant's message answering a chat history (kind chat.completion)."""

    role: Literal["assistant"]
    content: str = Field(description="the assistant's text (the JSON text for a schema answer)")
    parsed: dict[str, Any] | None = Field(
        None, description="with `response_schema`: the answer, parsed and validated against it")


CONTENT_MODELS: dict[ContentKind, type[BaseModel]] = {
    ContentKind.CHARACTER_BACKSTORY: CharacterBackstory,
    ContentKind.CHARACTER_COMBAT: CharacterCombat,
    ContentKind.CHARACTER_EQUIPMENT: CharacterEquipment,
    ContentKind.CAMPAIGN_PLOT: CampaignPlot,
    ContentKind.CAMPAIGN_QUEST: CampaignQuest,
    ContentKind.CAMPAIGN_EVENTS: CampaignEvents,
    ContentKind.WORLD_LOCATION: WorldLocation,
    ContentKind.WORLD_NPC_DIALOGUE: NpcDialogue,
    ContentKind.WORLD_ENVIRONMENT: WorldEnvironment,
    ContentKind.THEME_APPLY: ThemedText,
    ContentKind.THEME_ANALYZE: ThemeAnalysis,
    ContentKind.CONTENT_VALIDATE: ContentValidation,
    ContentKind.CHAT_COMPLETION: ChatAnswer,
}
