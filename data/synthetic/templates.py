"""Caption wording for the synthetic LUPerson-MLLM stand-in (docs/method.md), kept as plain data.

The dynamic instruction asks a captioner to follow one sentence pattern drawn at random per image. The
patterns below play the role of the paper's 46 LLM-written templates: each has slots in square brackets
that the synthetic "captioner" fills with phrases describing the drawn person. Every slot filler is a noun
phrase ("short black hair", "a red t-shirt and blue jeans", "no bag"), so a template may place any slot
wherever a noun phrase fits. The person slot is preceded by an article word that suits "man" and "woman".
"""

from __future__ import annotations

PERSON_SLOT = "[person/woman/man]"
HAIR_SLOT = "[hair description]"
CLOTHING_SLOT = "[clothing description]"
FOOTWEAR_SLOT = "[footwear description]"
BELONGINGS_SLOT = "[belongings description]"
ACCESSORY_SLOT = "[accessory description]"

SLOTS = (PERSON_SLOT, HAIR_SLOT, CLOTHING_SLOT, FOOTWEAR_SLOT, BELONGINGS_SLOT, ACCESSORY_SLOT)

DYNAMIC_TEMPLATES: tuple[str, ...] = (
    "A [person/woman/man] with [hair description], wearing [clothing description] and [footwear description], "
    "carrying [belongings description].",
    "The [person/woman/man] has [hair description] and is dressed in [clothing description]. On the feet are "
    "[footwear description]. The [person/woman/man] carries [belongings description] and wears "
    "[accessory description].",
    "Wearing [clothing description] and [footwear description], the [person/woman/man] with [hair description] "
    "is carrying [belongings description].",
    "A [person/woman/man] in [clothing description] and [footwear description]. The [person/woman/man] has "
    "[hair description] and carries [belongings description].",
    "The [person/woman/man] is walking in [clothing description], with [footwear description] on the feet. "
    "The [person/woman/man] has [hair description], carries [belongings description], and has "
    "[accessory description].",
    "Seen from the front, a [person/woman/man] with [hair description] wears [clothing description], "
    "[footwear description], and [accessory description]. Belongings: [belongings description].",
    "A [person/woman/man] who has [hair description] is carrying [belongings description]. The outfit consists "
    "of [clothing description] and [footwear description].",
    "Hair: [hair description]. Clothing: [clothing description]. Footwear: [footwear description]. "
    "Belongings: [belongings description]. Accessories: [accessory description]. Gender: [person/woman/man].",
    "The image shows a [person/woman/man] wearing [clothing description] together with [footwear description]; "
    "the [person/woman/man] has [hair description] and is holding [belongings description].",
    "With [belongings description] and [accessory description], the [person/woman/man] wears "
    "[clothing description] and [footwear description], and has [hair description].",
    "A [person/woman/man] with [hair description] stands in [clothing description]. Also visible: "
    "[footwear description], [belongings description], [accessory description].",
    "The [person/woman/man] is dressed in [clothing description] and wears [footwear description]. "
    "The [person/woman/man] has [hair description].",
    "In this picture, the [person/woman/man] has [hair description], is wearing [clothing description] and "
    "[footwear description], and is carrying [belongings description].",
    "A [person/woman/man] walking along, dressed in [clothing description], [footwear description] on the feet, "
    "[hair description], and [belongings description] in hand.",
    "This is a [person/woman/man] with [hair description]. The [person/woman/man] wears [clothing description], "
    "[footwear description] and [accessory description], and carries [belongings description].",
    "Dressed in [clothing description] with [footwear description], a [person/woman/man] with "
    "[hair description] carries [belongings description].",
)

# Markup that real MLLM output sometimes leaks (Shikra's grounding tags); {person} is the person noun and
# {box} a bounding box. A dynamic caption holding any <...> is dirty (docs/method.md).
MARKUP_PATTERNS: tuple[str, ...] = (
    "<ref>{person}</ref>",
    "{person}<box>{box}</box>",
    "<ref>{person}</ref><box>{box}</box>",
)
