"""Vocabulary of the built-in sample shop: categories, their product types and look-alike
accessories, synonyms, shop jargon, use-case phrasings, attributes and brands.

Why a separate module: the generator (``pipeline.world.sample``) is logic, this is content. The
words are chosen so that

* product texts use only the *catalog* vocabulary (type and accessory nouns, the category
  label, attribute values, brands);
* ``synonyms`` are everyday words a pretrained sentence encoder already relates to the
  product (couch/sofa) but that never occur in product text;
* ``jargon`` (shop slang, nicknames) and ``usecases`` (what the shopper wants to do) are
  mappings a pretrained model cannot know, but engagement logs can teach;
* accessories carry the main product's head noun in their titles ("Sofa Cover"), so
  lexical and embedding matching confuse them with what the shopper asked for.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductType:
    """A kind of product within a category (a sofa category sells sectionals, futons...)."""

    noun: str                        # catalog vocabulary: appears in titles
    synonyms: tuple[str, ...]        # everyday words for this type, never in product text
    price: float                     # price multiplier relative to the category median


@dataclass(frozen=True)
class Category:
    key: str
    label: str                       # catalog `category` column
    nouns: tuple[str, ...]           # generic head nouns (catalog vocabulary); nouns[0] names accessories
    synonyms: tuple[str, ...]        # common words a pretrained model knows
    jargon: tuple[str, ...]          # shop slang a pretrained model cannot know
    usecases: tuple[str, ...]        # "what I want to do" queries
    materials: tuple[str, ...]
    price: float                     # median price of the main products
    types: tuple[ProductType, ...] = ()
    accessories: tuple[str, ...] = ()  # look-alike accessory nouns (contain nouns[0])
    close: tuple[str, ...] = ()      # substitute categories
    complements: tuple[str, ...] = ()  # companion categories (grade 1)
    waterproof: bool = False         # has a waterproof attribute
    audience: str = ""               # "" | "kids" (adult/kids) | "gender" (men/women/kids)


def _types(spec: str) -> tuple[ProductType, ...]:
    """``"Noun:syn a,syn b:1.2; ..."`` -> product types (compact to keep the table readable)."""
    out = []
    for item in spec.split(";"):
        noun, syns, price = (part.strip() for part in item.split(":"))
        out.append(ProductType(noun, tuple(s.strip() for s in syns.split(",")), float(price)))
    return tuple(out)


def _acc(spec: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in spec.split(";"))


CATEGORIES: tuple[Category, ...] = (
    Category("sofa", "Sofas", ("Sofa",), ("couch", "settee"), ("chesterfield", "davenport"),
             ("somewhere to sit in the lounge", "seating for movie nights"), ("velvet", "linen", "leather"), 650,
             _types("Sectional Sofa:corner couch,l-shaped couch:1.5; Loveseat:two-seater couch,cosy couch:0.7;"
                    " Sleeper Sofa:couch bed,pull-out couch:1.2; Futon:floor couch,fold-down couch:0.5"),
             _acc("Sofa Cover; Sofa Cushion Set; Replacement Sofa Legs"),
             close=("armchair",), complements=("pillow", "desk_lamp")),
    Category("armchair", "Armchairs", ("Armchair",), ("easy chair", "lounge chair"), ("throne", "comfy seat"),
             ("cosy reading corner seat",), ("velvet", "linen", "leather"), 280,
             _types("Wingback Armchair:wing chair,high-back chair:1.2; Reclining Armchair:recliner,lay-back chair:1.4;"
                    " Accent Armchair:side chair,occasional chair:0.8"),
             _acc("Armchair Cover; Armchair Cushion"), close=("sofa",), complements=("desk_lamp",)),
    Category("running_shoes", "Running Shoes", ("Running Shoe",), ("sneakers", "trainers"), ("kicks", "runners"),
             ("something for jogging", "marathon training"), ("mesh", "knit", "synthetic"), 95,
             _types("Road Running Shoe:pavement sneakers,road trainers:1.0; Trail Running Shoe:off-road sneakers,trail trainers:1.15;"
                    " Racing Running Shoe:race day sneakers,speed trainers:1.4"),
             _acc("Running Shoe Laces; Running Shoe Insoles; Running Shoe Cleaner"),
             close=("hiking_boots",), complements=("water_bottle", "tshirt"), waterproof=True, audience="gender"),
    Category("hiking_boots", "Hiking Boots", ("Hiking Boot",), ("walking footwear", "trekking footwear"),
             ("clodhoppers", "stompers"), ("mountain trip", "muddy trail walks"), ("leather", "suede", "synthetic"), 140,
             _types("Mid Hiking Boot:ankle trekkers,mid-height trekkers:1.0; Mountaineering Hiking Boot:alpine footwear,climbing footwear:1.6;"
                    " Lightweight Hiking Boot:featherweight trekkers,fast trekkers:0.85"),
             _acc("Hiking Boot Laces; Hiking Boot Insoles; Hiking Boot Wax"),
             close=("running_shoes",), complements=("backpack", "tent"), waterproof=True, audience="gender"),
    Category("rain_jacket", "Rain Jackets", ("Rain Jacket",), ("raincoat", "anorak"), ("slicker", "cagoule"),
             ("something for a rainy walk", "staying dry on a wet day"), ("nylon", "polyester", "gore-tex"), 120,
             _types("Packable Rain Jacket:pocket raincoat,foldaway raincoat:0.8; Insulated Rain Jacket:padded raincoat,winter raincoat:1.4;"
                    " Rain Poncho Jacket:cape raincoat,festival raincoat:0.5"),
             _acc("Rain Jacket Reproofing Spray; Rain Jacket Hanger"),
             close=("umbrella",), complements=("hiking_boots",), waterproof=True, audience="gender"),
    Category("umbrella", "Umbrellas", ("Umbrella",), ("parasol", "sunshade"), ("brolly", "gamp"),
             ("drizzle commute cover",), ("nylon", "polyester", "fibreglass"), 25,
             _types("Compact Umbrella:folding parasol,pocket parasol:0.8; Golf Umbrella:oversized parasol,giant parasol:1.5;"
                    " Bubble Umbrella:dome parasol,see-through parasol:1.0"),
             _acc("Umbrella Stand; Umbrella Sleeve"), close=("rain_jacket",), complements=("rain_jacket",), waterproof=True),
    Category("headphones", "Headphones", ("Headphones",), ("earphones", "headset"), ("cans", "earbuds"),
             ("listening to music on the train", "podcasts on the commute"), ("plastic", "aluminium", "leather"), 150,
             _types("Over-Ear Headphones:studio earphones,full-size earphones:1.2; On-Ear Headphones:lightweight earphones,compact headset:0.8;"
                    " Noise Cancelling Headphones:quiet earphones,anc headset:1.8"),
             _acc("Headphones Ear Pads; Headphones Stand; Headphones Cable"),
             close=("speaker",), complements=("phone_case", "laptop")),
    Category("speaker", "Speakers", ("Speaker",), ("boombox", "loudspeaker"), ("boomer", "thumper"),
             ("music at a beach party", "tunes for a picnic"), ("plastic", "aluminium", "fabric"), 90,
             _types("Bluetooth Speaker:wireless boombox,cordless loudspeaker:0.9; Smart Speaker:voice assistant,alexa device:1.2;"
                    " Party Speaker:karaoke boombox,disco loudspeaker:2.0"),
             _acc("Speaker Wall Mount; Speaker Carry Case"), close=("headphones",), complements=("phone_case",), waterproof=True),
    Category("laptop", "Laptops", ("Laptop",), ("computer", "macbook"), ("lappy", "ultrabook"),
             ("working from a cafe", "writing my thesis"), ("aluminium", "plastic", "magnesium"), 900,
             _types("Gaming Laptop:gamer computer,esports computer:1.6; 2-in-1 Laptop:convertible computer,flip computer:1.0;"
                    " Business Laptop:office computer,work computer:1.1; Chromebook Laptop:school computer,student computer:0.45"),
             _acc("Laptop Sleeve; Laptop Charger; Laptop Stand"), close=("tablet",), complements=("backpack", "headphones")),
    Category("tablet", "Tablets", ("Tablet",), ("ipad", "e-reader"), ("slate", "phablet"),
             ("reading ebooks in bed", "drawing on the go"), ("aluminium", "plastic", "glass"), 400,
             _types("Drawing Tablet:artist ipad,sketching ipad:1.2; Mini Tablet:little ipad,pocket ipad:0.7;"
                    " Learning Tablet:educational ipad,homework ipad:0.4"),
             _acc("Tablet Case; Tablet Screen Protector; Tablet Stylus"), close=("laptop",), complements=("phone_case",),
             audience="kids"),
    Category("phone_case", "Phone Cases", ("Phone Case",), ("mobile cover", "cellphone cover"), ("bumper", "skin"),
             ("protecting my mobile from drops",), ("silicone", "leather", "plastic"), 20,
             _types("Wallet Phone Case:flip mobile cover,card holder mobile cover:1.3; Rugged Phone Case:heavy duty mobile cover,shockproof mobile cover:1.2;"
                    " Clear Phone Case:transparent mobile cover,see-through mobile cover:0.7"),
             _acc("Phone Case Lanyard; Phone Case Ring Holder"), complements=("headphones",)),
    Category("backpack", "Backpacks", ("Backpack",), ("rucksack", "knapsack"), ("daypack", "bookbag"),
             ("carrying books to school", "weekend city break luggage"), ("canvas", "nylon", "leather"), 70,
             _types("Travel Backpack:carry-on rucksack,cabin rucksack:1.3; School Backpack:satchel rucksack,student rucksack:0.7;"
                    " Hiking Backpack:trekking rucksack,hydration rucksack:1.2"),
             _acc("Backpack Rain Cover; Backpack Organiser Insert"),
             complements=("water_bottle", "laptop"), waterproof=True, audience="kids"),
    Category("water_bottle", "Water Bottles", ("Water Bottle",), ("flask", "canteen"), ("hydro", "sipper"),
             ("staying hydrated at the gym",), ("stainless steel", "plastic", "glass"), 25,
             _types("Insulated Water Bottle:thermos flask,vacuum flask:1.4; Sports Water Bottle:squeeze flask,cycling canteen:0.7;"
                    " Filter Water Bottle:purifying flask,filtering canteen:1.3"),
             _acc("Water Bottle Cleaning Brush; Water Bottle Lid; Water Bottle Carrier"),
             complements=("backpack", "yoga_mat"), audience="kids"),
    Category("tshirt", "T-Shirts", ("T-Shirt",), ("tee", "top"), ("crewneck", "basic"),
             ("summer casual outfit",), ("cotton", "linen", "polyester"), 20,
             _types("Graphic T-Shirt:printed tee,slogan tee:1.1; V-Neck T-Shirt:vee tee,v collar tee:1.0;"
                    " Long Sleeve T-Shirt:longsleeve tee,full sleeve tee:1.2"),
             _acc("T-Shirt Folding Board; T-Shirt Storage Bag"), close=("hoodie",), complements=("jeans",), audience="gender"),
    Category("hoodie", "Hooded Sweatshirts", ("Hooded Sweatshirt",), ("hoodie", "pullover"), ("hoody", "jumper"),
             ("lazy sunday comfort wear",), ("cotton", "fleece", "polyester"), 45,
             _types("Zip Hooded Sweatshirt:full-zip hoodie,zipper hoodie:1.1; Oversized Hooded Sweatshirt:baggy hoodie,boyfriend hoodie:1.0;"
                    " Cropped Hooded Sweatshirt:short hoodie,crop hoodie:0.9"),
             _acc("Hooded Sweatshirt Drawstring; Hooded Sweatshirt Patch"),
             close=("tshirt",), complements=("jeans",), audience="gender"),
    Category("jeans", "Jeans", ("Jeans",), ("denim pants", "denim trousers"), ("denims", "501s"),
             ("everyday legwear",), ("denim", "stretch denim", "organic cotton"), 60,
             _types("Slim Fit Jeans:skinny denim pants,tapered denim pants:1.0; Straight Leg Jeans:classic denim pants,regular denim pants:1.0;"
                    " Bootcut Jeans:flared denim pants,flare denim pants:1.1"),
             _acc("Jeans Belt; Jeans Repair Patch"), complements=("tshirt", "hoodie"), audience="gender"),
    Category("desk_lamp", "Desk Lamps", ("Desk Lamp",), ("reading light", "table light"), ("anglepoise", "task light"),
             ("late night studying",), ("metal", "wood", "plastic"), 45,
             _types("LED Desk Lamp:dimmable reading light,energy saving reading light:1.0; Architect Desk Lamp:swing arm reading light,drafting light:1.3;"
                    " Clip Desk Lamp:clamp reading light,bed clamp:0.6"),
             _acc("Desk Lamp Bulb; Desk Lamp Shade"), complements=("armchair",)),
    Category("coffee_maker", "Coffee Makers", ("Coffee Maker",), ("cafetiere", "percolator"), ("bean-to-cup", "moka"),
             ("my morning caffeine fix",), ("stainless steel", "plastic", "aluminium"), 180,
             _types("Espresso Coffee Maker:barista machine,espresso machine:2.0; Drip Coffee Maker:filter brewer,pour-over brewer:0.5;"
                    " Pod Coffee Maker:capsule brewer,nespresso:0.7"),
             _acc("Coffee Maker Descaler; Coffee Maker Filter Papers; Coffee Maker Carafe"),
             close=("kettle",), complements=("water_bottle",)),
    Category("kettle", "Kettles", ("Kettle",), ("water boiler", "teapot heater"), ("brewer", "cuppa maker"),
             ("making a cup of tea",), ("stainless steel", "glass", "plastic"), 40,
             _types("Electric Kettle:cordless water boiler,plug-in water boiler:1.0; Stovetop Kettle:hob water boiler,whistling teapot:0.8;"
                    " Variable Temperature Kettle:temperature control water boiler,gooseneck boiler:1.6"),
             _acc("Kettle Descaler; Kettle Filter"), close=("coffee_maker",)),
    Category("blender", "Blenders", ("Blender",), ("smoothie maker", "liquidiser"), ("nutri", "whizzer"),
             ("healthy breakfast shakes",), ("glass", "plastic", "stainless steel"), 80,
             _types("Personal Blender:single serve smoothie maker,travel smoothie maker:0.5; Countertop Blender:jug liquidiser,full size liquidiser:1.2;"
                    " Hand Blender:stick liquidiser,immersion liquidiser:0.6"),
             _acc("Blender Jug; Blender Blade Assembly"), complements=("water_bottle",)),
    Category("frying_pan", "Frying Pans", ("Frying Pan",), ("skillet", "saute"), ("griddle", "flipper"),
             ("cooking eggs and bacon",), ("cast iron", "stainless steel", "aluminium"), 35,
             _types("Non-Stick Frying Pan:teflon skillet,easy clean skillet:0.9; Wok Frying Pan:stir fry skillet,asian skillet:1.1;"
                    " Grill Frying Pan:ridged skillet,searing skillet:1.2"),
             _acc("Frying Pan Lid; Frying Pan Splatter Guard"), close=("saucepan",), complements=("saucepan",)),
    Category("saucepan", "Saucepans", ("Saucepan",), ("cooking pot", "stockpot"), ("simmerer", "billy"),
             ("boiling pasta for the family",), ("stainless steel", "copper", "aluminium"), 50,
             _types("Saucepan Set:pot collection,cooking pot bundle:2.0; Milk Saucepan:little cooking pot,sauce pot:0.6;"
                    " Casserole Saucepan:dutch oven,braising pot:1.5"),
             _acc("Saucepan Lid; Saucepan Handle"), close=("frying_pan",), complements=("frying_pan",)),
    Category("duvet", "Duvets", ("Duvet",), ("comforter", "quilt"), ("doona", "tog"),
             ("staying warm in bed at night",), ("cotton", "microfibre", "silk"), 90,
             _types("Winter Duvet:heavy comforter,thick quilt:1.2; Summer Duvet:light comforter,thin quilt:0.8;"
                    " Weighted Duvet:heavy blanket,anxiety blanket:1.8"),
             _acc("Duvet Cover; Duvet Clips"), close=("pillow",), complements=("pillow",), audience="kids"),
    Category("pillow", "Pillows", ("Pillow",), ("bolster", "headrest"), ("pilly", "snoozer"),
             ("neck support while sleeping",), ("memory foam", "feather", "microfibre"), 30,
             _types("Memory Foam Pillow:contour headrest,orthopaedic headrest:1.3; Body Pillow:long bolster,pregnancy bolster:1.4;"
                    " Travel Pillow:neck headrest,airplane headrest:0.6"),
             _acc("Pillow Case; Pillow Protector"), close=("duvet",), complements=("duvet",), audience="kids"),
    Category("tent", "Tents", ("Tent",), ("shelter", "marquee"), ("bivvy", "pop-up"),
             ("camping trip at a festival", "sleeping outdoors"), ("nylon", "polyester", "canvas"), 160,
             _types("Dome Tent:igloo shelter,freestanding shelter:1.0; Backpacking Tent:ultralight shelter,one person shelter:1.3;"
                    " Family Tent:group shelter,six person shelter:2.0"),
             _acc("Tent Pegs; Tent Footprint; Tent Repair Kit"), close=("sleeping_bag",),
             complements=("sleeping_bag", "backpack"), waterproof=True),
    Category("sleeping_bag", "Sleeping Bags", ("Sleeping Bag",), ("bedroll", "sleep sack"), ("kip sack", "fart sack"),
             ("cold night under the stars",), ("down", "synthetic", "cotton"), 75,
             _types("Mummy Sleeping Bag:tapered bedroll,cocoon bedroll:1.2; Rectangular Sleeping Bag:envelope bedroll,roomy bedroll:0.9;"
                    " Double Sleeping Bag:two person bedroll,couples bedroll:1.5"),
             _acc("Sleeping Bag Liner; Sleeping Bag Stuff Sack"), close=("tent",), complements=("tent",),
             waterproof=True, audience="kids"),
    Category("watch", "Watches", ("Wristwatch",), ("timepiece", "chronograph"), ("ticker", "beater"),
             ("telling time on the go", "anniversary gift for him"), ("stainless steel", "leather", "titanium"), 220,
             _types("Dive Wristwatch:diver timepiece,scuba timepiece:1.3; Smart Wristwatch:fitness tracker,apple timepiece:1.2;"
                    " Dress Wristwatch:formal timepiece,elegant timepiece:1.1"),
             _acc("Wristwatch Strap; Wristwatch Battery; Wristwatch Winder"), complements=("sunglasses",),
             waterproof=True, audience="gender"),
    Category("sunglasses", "Sunglasses", ("Sunglasses",), ("shades", "eyewear"), ("sunnies", "aviators"),
             ("bright beach holiday",), ("acetate", "metal", "plastic"), 80,
             _types("Polarised Sunglasses:glare free shades,fishing shades:1.2; Sport Sunglasses:cycling shades,wraparound shades:1.0;"
                    " Round Sunglasses:retro shades,circle shades:0.9"),
             _acc("Sunglasses Case; Sunglasses Strap"), complements=("watch",), audience="gender"),
    Category("yoga_mat", "Yoga Mats", ("Yoga Mat",), ("exercise rug", "pilates pad"), ("yogi", "namaste"),
             ("morning stretching routine",), ("rubber", "cork", "tpe"), 35,
             _types("Thick Yoga Mat:cushioned exercise rug,padded exercise rug:1.1; Travel Yoga Mat:foldable exercise rug,portable pilates pad:0.9;"
                    " Hot Yoga Mat:sweat proof exercise rug,bikram pad:1.2"),
             _acc("Yoga Mat Strap; Yoga Mat Cleaner Spray; Yoga Mat Bag"), complements=("water_bottle",)),
    Category("bike_helmet", "Bike Helmets", ("Bike Helmet",), ("bicycle headgear", "head protector"), ("brain bucket", "skid lid"),
             ("safe commute on two wheels",), ("polycarbonate", "eps foam", "carbon"), 70,
             _types("Road Bike Helmet:racing headgear,aero headgear:1.3; Mountain Bike Helmet:mtb headgear,off-road headgear:1.2;"
                    " Commuter Bike Helmet:city headgear,urban headgear:0.8"),
             _acc("Bike Helmet Visor; Bike Helmet Light; Bike Helmet Pads"),
             complements=("water_bottle", "sunglasses"), audience="kids"),
)

COLOURS: tuple[str, ...] = ("black", "white", "grey", "navy", "red", "green", "beige", "pink")
# Words for a colour that never appear in product text (gray is US spelling of grey).
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "black": ("jet", "ebony"), "white": ("ivory", "snow"), "grey": ("gray", "charcoal"),
    "navy": ("dark blue", "midnight blue"), "red": ("crimson", "scarlet"), "green": ("olive", "emerald"),
    "beige": ("tan", "sand"), "pink": ("blush", "rose"),
}
SIZES: tuple[str, ...] = ("small", "medium", "large")
# How a size is asked for: literally, by a synonym, or implied by a use case.
SIZE_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "small": (("small",), ("compact", "mini"), ("for a tiny flat", "for small spaces")),
    "large": (("large",), ("big", "xl"), ("for the whole family", "for a big household")),
}
WATERPROOF_PHRASES: tuple[str, ...] = ("waterproof",)
WATERPROOF_SYNONYMS: tuple[str, ...] = ("rainproof", "storm ready", "water resistant")
WATERPROOF_IMPLIED: tuple[str, ...] = ("for wet weather", "for a rainy holiday")
# Audience values, the text shown in products and how shoppers ask for them.
AUDIENCE_TITLE: dict[str, str] = {"kids": "Kids", "men": "Men's", "women": "Women's"}
AUDIENCE_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "kids": (("kids",), ("junior", "childrens"), ("for my toddler", "for my son", "for my daughter")),
    "men": (("mens",), ("male", "gents"), ("for him", "for my husband")),
    "women": (("womens",), ("ladies", "female"), ("for her", "for my wife")),
}
PRICE_PHRASES: tuple[str, ...] = ("cheap", "budget", "affordable")      # bound = 0.8 x the type's median price
PRICE_IMPLIED: tuple[str, ...] = ("on a student budget", "for not much money")

# Invented brands and the nicknames shoppers use for them (never in product text).
BRANDS: tuple[tuple[str, str], ...] = (
    ("Nordhaven", "nordy"), ("Kestrel Works", "kestie"), ("Bramblecroft", "brambles"), ("Velocita", "velo"),
    ("Aurelio", "auri"), ("Timberline", "timbs"), ("Lumina", "lumi"), ("Stratus", "strat"),
    ("Quillfield", "quilly"), ("Harrowgate", "harrows"), ("Pinecrest", "piney"), ("Solvik", "solly"),
    ("Marlowe Finch", "marlowes"), ("Cobalt Peak", "cobes"), ("Driftwood", "drifty"), ("Ironbark", "barky"),
    ("Halcyon", "hally"), ("Orbis", "orbie"), ("Wrenfield", "wrenny"), ("Tidewater", "tidey"),
)
BRANDS_PER_CATEGORY = 6

# Held out of train and valid queries, for the `unseen` split: whole categories, and one
# product type (by its noun) in some others. Their products stay in the catalog.
UNSEEN_CATEGORIES: tuple[str, ...] = ("sunglasses", "kettle")
UNSEEN_TYPES: tuple[str, ...] = ("Futon", "Trail Running Shoe", "Insulated Rain Jacket", "Smart Speaker",
                                 "Wok Frying Pan", "Weighted Duvet", "Family Tent", "Mountain Bike Helmet")


def production_synonyms() -> dict[str, tuple[str, ...]]:
    """Partial query-expansion table used by the simulated production ranker.

    It knows SOME everyday synonyms (the first synonym of every other category) and
    nothing of jargon, use cases or type-level synonyms.
    """
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
