"""Generated product titles for the quantization benchmark (seeded, all distinct)."""

from __future__ import annotations

import numpy as np

BRANDS = [
    "Acme",
    "Nordic",
    "Vertex",
    "Lumina",
    "Oakridge",
    "Pinnacle",
    "Zephyr",
    "Harbor",
    "Crest",
    "Summit",
    "Evergreen",
    "Falcon",
    "Granite",
    "Horizon",
    "Ironwood",
    "Juniper",
    "Kestrel",
    "Meridian",
    "Nova",
    "Orbit",
]
PRODUCTS = {
    "Office": [
        "Stapler",
        "Desk Organizer",
        "Ballpoint Pens",
        "Sticky Notes",
        "File Folders",
        "Label Maker",
        "Paper Shredder",
        "Whiteboard Markers",
        "Binder Clips",
        "Desk Lamp",
        "Printer Paper",
        "Calculator",
    ],
    "Kitchen": [
        "Chef Knife",
        "Cutting Board",
        "Frying Pan",
        "Coffee Grinder",
        "Mixing Bowls",
        "Blender",
        "Measuring Cups",
        "Tea Kettle",
        "Spatula Set",
        "Food Storage Containers",
        "Toaster",
        "Dish Rack",
    ],
    "Games": [
        "Wireless Controller",
        "Gaming Headset",
        "Racing Wheel",
        "Charging Dock",
        "Memory Card",
        "Adventure Game",
        "Puzzle Game",
        "Shooter Game",
        "Sports Game",
        "Carrying Case",
        "Arcade Stick",
        "Gaming Mouse",
    ],
    "Tools": [
        "Cordless Drill",
        "Screwdriver Set",
        "Tape Measure",
        "Socket Wrench",
        "Utility Knife",
        "Level",
        "Hammer",
        "Pliers",
        "Stud Finder",
        "Work Light",
        "Tool Box",
        "Safety Glasses",
    ],
    "Outdoor": [
        "Camping Tent",
        "Sleeping Bag",
        "Hiking Backpack",
        "Water Bottle",
        "Headlamp",
        "Trekking Poles",
        "Camp Stove",
        "Rain Jacket",
        "Cooler",
        "Hammock",
        "Compass",
        "Fishing Rod",
    ],
}
ADJECTIVES = [
    "Heavy-Duty",
    "Compact",
    "Premium",
    "Ergonomic",
    "Portable",
    "Professional",
    "Lightweight",
    "Stainless Steel",
    "Eco-Friendly",
    "Deluxe",
    "Classic",
    "Ultra-Slim",
    "Rechargeable",
    "Waterproof",
]
COLORS = ["Black", "White", "Blue", "Red", "Green", "Silver", "Gray", "Orange", "Purple", "Yellow"]
EXTRAS = [
    "2-Pack",
    "Set of 3",
    "for Home and Office",
    "with Carry Bag",
    "Large",
    "Small",
    "XL",
    "12 Count",
    "Value Pack",
    "Limited Edition",
    "Gift Set",
    "with Warranty",
    "",
    "",
    "",
]


def generate_titles(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    cats = list(PRODUCTS)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        cat = cats[rng.integers(len(cats))]
        parts = [
            BRANDS[rng.integers(len(BRANDS))],
            ADJECTIVES[rng.integers(len(ADJECTIVES))],
            PRODUCTS[cat][rng.integers(len(PRODUCTS[cat]))],
            "-",
            COLORS[rng.integers(len(COLORS))],
            EXTRAS[rng.integers(len(EXTRAS))],
        ]
        title = " ".join(p for p in parts if p)
        if title not in seen:
            seen.add(title)
            out.append(title)
    return out
