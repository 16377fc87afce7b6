"""Vocabulary of the built-in sample shop: categories, their synonyms, shop jargon and
use-case phrasings, attributes and brands (with nicknames).

Why a separate module: the generator (``pipeline.sample``) is logic, this is content. The
words are chosen so that

* product texts use only the *catalog* vocabulary (``nouns``, ``label``, attribute values);
* ``synonyms`` are everyday words a pretrained sentence encoder already relates to the
  product (couch/sofa) but that never occur in product text;
* ``jargon`` (shop slang, nicknames) and ``usecases`` (what the shopper wants to do) are
  mappings a pretrained model cannot know, but engagement logs can teach;
so lexical matching fails on a large share of queries and learning from logs pays off.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    key: str
    label: str                       # catalog `category` column
    nouns: tuple[str, ...]           # title head nouns (catalog vocabulary)
    synonyms: tuple[str, ...]        # common words a pretrained model knows
    jargon: tuple[str, ...]          # shop slang a pretrained model cannot know
    usecases: tuple[str, ...]        # "what I want to do" queries
    materials: tuple[str, ...]
    price: float                     # median price
    close: tuple[str, ...] = ()      # substitutes (grade 2)
    complements: tuple[str, ...] = ()  # complements (grade 1)
    waterproof: bool = False         # has a waterproof attribute
    kids: bool = False               # has an age-group attribute


CATEGORIES: tuple[Category, ...] = (
    Category("sofa", "Sofas", ("Sofa", "Three-Seater Sofa"), ("couch", "settee"), ("chesterfield", "davenport"),
             ("somewhere to sit in the lounge", "seating for movie nights"), ("velvet", "linen", "leather"), 650,
             close=("armchair",), complements=("pillow", "desk_lamp")),
    Category("armchair", "Armchairs", ("Armchair", "Accent Chair"), ("recliner", "easy chair"), ("wingback", "throne"),
             ("cosy reading corner seat",), ("velvet", "linen", "leather"), 280, close=("sofa",), complements=("desk_lamp",)),
    Category("running_shoes", "Running Shoes", ("Running Shoe", "Road Running Shoe"), ("sneakers", "trainers"),
             ("kicks", "runners"), ("something for jogging", "marathon training"), ("mesh", "knit", "synthetic"), 95,
             close=("hiking_boots",), complements=("water_bottle", "tshirt"), waterproof=True, kids=True),
    Category("hiking_boots", "Hiking Boots", ("Hiking Boot", "Trail Boot"), ("walking footwear", "trekking footwear"),
             ("clodhoppers", "stompers"), ("mountain trip", "muddy trail walks"), ("leather", "suede", "synthetic"), 140,
             close=("running_shoes",), complements=("backpack", "tent"), waterproof=True, kids=True),
    Category("rain_jacket", "Rain Jackets", ("Rain Jacket", "Shell Jacket"), ("raincoat", "anorak"), ("slicker", "cagoule"),
             ("something for a rainy walk", "staying dry on a wet day"), ("nylon", "polyester", "gore-tex"), 120,
             close=("umbrella",), complements=("hiking_boots",), waterproof=True, kids=True),
    Category("umbrella", "Umbrellas", ("Umbrella", "Compact Umbrella"), ("parasol", "sunshade"), ("brolly", "gamp"),
             ("drizzle commute cover",), ("nylon", "polyester", "fibreglass"), 25, close=("rain_jacket",),
             complements=("rain_jacket",), waterproof=True),
    Category("headphones", "Headphones", ("Headphones", "Over-Ear Headphones"), ("earphones", "headset"), ("cans", "earbuds"),
             ("listening to music on the train", "podcasts on the commute"), ("plastic", "aluminium", "leather"), 150,
             close=("speaker",), complements=("phone_case", "laptop")),
    Category("speaker", "Speakers", ("Bluetooth Speaker", "Portable Speaker"), ("boombox", "loudspeaker"), ("boomer", "thumper"),
             ("music at a beach party", "tunes for a picnic"), ("plastic", "aluminium", "fabric"), 90,
             close=("headphones",), complements=("phone_case",), waterproof=True),
    Category("laptop", "Laptops", ("Laptop", "Notebook PC"), ("computer", "macbook"), ("lappy", "ultrabook"),
             ("working from a cafe", "writing my thesis"), ("aluminium", "plastic", "magnesium"), 900,
             close=("tablet",), complements=("backpack", "headphones")),
    Category("tablet", "Tablets", ("Tablet", "Tablet PC"), ("ipad", "e-reader"), ("slate", "phablet"),
             ("reading ebooks in bed", "drawing on the go"), ("aluminium", "plastic", "glass"), 400,
             close=("laptop",), complements=("phone_case",), kids=True),
    Category("phone_case", "Phone Cases", ("Phone Case", "Smartphone Case"), ("mobile cover", "cellphone cover"),
             ("bumper", "skin"), ("protecting my mobile from drops",), ("silicone", "leather", "plastic"), 20,
             complements=("headphones",)),
    Category("backpack", "Backpacks", ("Backpack", "Travel Backpack"), ("rucksack", "knapsack"), ("daypack", "bookbag"),
             ("carrying books to school", "weekend city break luggage"), ("canvas", "nylon", "leather"), 70,
             complements=("water_bottle", "laptop"), waterproof=True, kids=True),
    Category("water_bottle", "Water Bottles", ("Water Bottle", "Insulated Bottle"), ("flask", "canteen"), ("hydro", "sipper"),
             ("staying hydrated at the gym",), ("stainless steel", "plastic", "glass"), 25,
             complements=("backpack", "yoga_mat"), kids=True),
    Category("tshirt", "T-Shirts", ("T-Shirt", "Crew Neck T-Shirt"), ("tee", "top"), ("crewneck", "basic"),
             ("summer casual outfit",), ("cotton", "linen", "polyester"), 20, close=("hoodie",),
             complements=("jeans",), kids=True),
    Category("hoodie", "Hooded Sweatshirts", ("Hooded Sweatshirt", "Zip Hooded Sweatshirt"), ("hoodie", "pullover"),
             ("hoody", "zip-up"), ("lazy sunday comfort wear",), ("cotton", "fleece", "polyester"), 45,
             close=("tshirt",), complements=("jeans",), kids=True),
    Category("jeans", "Jeans", ("Jeans", "Slim Fit Jeans"), ("denim pants", "denim trousers"), ("denims", "501s"),
             ("everyday legwear",), ("denim", "stretch denim", "organic cotton"), 60, complements=("tshirt", "hoodie"),
             kids=True),
    Category("desk_lamp", "Desk Lamps", ("Desk Lamp", "LED Desk Lamp"), ("reading light", "table light"),
             ("anglepoise", "task light"), ("late night studying",), ("metal", "wood", "plastic"), 45,
             complements=("armchair",)),
    Category("coffee_maker", "Coffee Makers", ("Coffee Maker", "Espresso Machine"), ("cafetiere", "percolator"),
             ("bean-to-cup", "moka"), ("my morning caffeine fix",), ("stainless steel", "plastic", "aluminium"), 180,
             close=("kettle",), complements=("water_bottle",)),
    Category("kettle", "Kettles", ("Kettle", "Electric Kettle"), ("water boiler", "teapot heater"), ("brewer", "cuppa maker"),
             ("making a cup of tea",), ("stainless steel", "glass", "plastic"), 40, close=("coffee_maker",)),
    Category("blender", "Blenders", ("Blender", "Countertop Blender"), ("smoothie maker", "liquidiser"),
             ("nutri", "whizzer"), ("healthy breakfast shakes",), ("glass", "plastic", "stainless steel"), 80,
             complements=("water_bottle",)),
    Category("frying_pan", "Frying Pans", ("Frying Pan", "Non-Stick Frying Pan"), ("skillet", "saute"), ("griddle", "flipper"),
             ("cooking eggs and bacon",), ("cast iron", "stainless steel", "aluminium"), 35, close=("saucepan",),
             complements=("saucepan",)),
    Category("saucepan", "Saucepans", ("Saucepan", "Saucepan Set"), ("cooking pot", "stockpot"), ("simmerer", "billy"),
             ("boiling pasta for the family",), ("stainless steel", "copper", "aluminium"), 50, close=("frying_pan",),
             complements=("frying_pan",)),
    Category("duvet", "Duvets", ("Duvet", "All-Season Duvet"), ("comforter", "quilt"), ("doona", "tog"),
             ("staying warm in bed at night",), ("cotton", "microfibre", "silk"), 90, close=("pillow",),
             complements=("pillow",), kids=True),
    Category("pillow", "Pillows", ("Pillow", "Memory Foam Pillow"), ("bolster", "headrest"), ("pilly", "snoozer"),
             ("neck support while sleeping",), ("memory foam", "feather", "microfibre"), 30, close=("duvet",),
             complements=("duvet",), kids=True),
    Category("tent", "Tents", ("Tent", "Dome Tent"), ("shelter", "marquee"), ("bivvy", "pop-up"),
             ("camping trip at a festival", "sleeping outdoors"), ("nylon", "polyester", "canvas"), 160,
             close=("sleeping_bag",), complements=("sleeping_bag", "backpack"), waterproof=True),
    Category("sleeping_bag", "Sleeping Bags", ("Sleeping Bag", "Mummy Sleeping Bag"), ("bedroll", "sleep sack"),
             ("kip sack", "fart sack"), ("cold night under the stars",), ("down", "synthetic", "cotton"), 75,
             close=("tent",), complements=("tent",), waterproof=True, kids=True),
    Category("watch", "Watches", ("Wristwatch", "Analog Wristwatch"), ("timepiece", "chronograph"), ("ticker", "beater"),
             ("telling time on the go", "anniversary gift for him"), ("stainless steel", "leather", "titanium"), 220,
             complements=("sunglasses",), waterproof=True),
    Category("sunglasses", "Sunglasses", ("Sunglasses", "Polarised Sunglasses"), ("shades", "eyewear"), ("sunnies", "aviators"),
             ("bright beach holiday",), ("acetate", "metal", "plastic"), 80, complements=("watch",), kids=True),
    Category("yoga_mat", "Yoga Mats", ("Yoga Mat", "Non-Slip Yoga Mat"), ("exercise rug", "pilates pad"), ("yogi", "namaste"),
             ("morning stretching routine",), ("rubber", "cork", "tpe"), 35, complements=("water_bottle",)),
    Category("bike_helmet", "Bike Helmets", ("Bike Helmet", "Cycling Helmet"), ("bicycle headgear", "head protector"),
             ("lid", "skid lid"), ("safe commute on two wheels",), ("polycarbonate", "eps foam", "carbon"), 70,
             complements=("water_bottle", "sunglasses"), kids=True),
)

COLOURS: tuple[str, ...] = ("black", "white", "grey", "navy", "red", "green", "beige", "pink")
# Words for a colour that never appear in product text (gray is US spelling of grey).
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "black": ("jet", "ebony"), "white": ("ivory", "snow"), "grey": ("gray", "charcoal"),
    "navy": ("dark blue", "midnight blue"), "red": ("crimson", "scarlet"), "green": ("olive", "emerald"),
    "beige": ("tan", "sand"), "pink": ("blush", "rose"),
}
SIZES: tuple[str, ...] = ("small", "medium", "large")
WATERPROOF_PHRASES: tuple[str, ...] = ("waterproof",)
WATERPROOF_SYNONYMS: tuple[str, ...] = ("rainproof", "for wet weather", "storm ready")
KIDS_PHRASES: tuple[str, ...] = ("kids",)
KIDS_SYNONYMS: tuple[str, ...] = ("for children", "for toddlers", "for my son", "for my daughter", "junior")

# Invented brands and the nicknames shoppers use for them (never in product text).
BRANDS: tuple[tuple[str, str], ...] = (
    ("Nordhaven", "nordy"), ("Kestrel Works", "kestie"), ("Bramblecroft", "brambles"), ("Velocita", "velo"),
    ("Aurelio", "auri"), ("Timberline", "timbs"), ("Lumina", "lumi"), ("Stratus", "strat"),
    ("Quillfield", "quilly"), ("Harrowgate", "harrows"), ("Pinecrest", "piney"), ("Solvik", "solly"),
    ("Marlowe Finch", "marlowes"), ("Cobalt Peak", "cobes"), ("Driftwood", "drifty"), ("Ironbark", "barky"),
    ("Halcyon", "hally"), ("Orbis", "orbie"), ("Wrenfield", "wrenny"), ("Tidewater", "tidey"),
)
BRANDS_PER_CATEGORY = 6

# The production ranker's own hand-made synonym table: it knows SOME everyday synonyms
# (first synonym of every other category) and nothing of jargon or use cases.
def production_synonyms() -> dict[str, tuple[str, ...]]:
    """Partial query-expansion table used by the simulated production ranker."""
    table: dict[str, tuple[str, ...]] = {}
    for i, cat in enumerate(CATEGORIES):
        if i % 2 == 0:
            for word in cat.synonyms[0].split():
                table.setdefault(word, ())
                table[word] = tuple(dict.fromkeys(table[word] + tuple(cat.label.lower().split())))
    for colour, syns in COLOUR_SYNONYMS.items():
        if len(syns[0].split()) == 1:
            table.setdefault(syns[0], (colour,))
    return table
