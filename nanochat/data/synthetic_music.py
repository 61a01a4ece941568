"""A second seeded fictional world, unlike the default one (nanochat.data.synthetic) in everything but its file
format: a music scene of musicians, bands, albums, towns and venues instead of people, companies, products and
cities; other question templates, other phrasing, other name shapes, and documents whose sentences come in a
seeded order instead of fixed slots.

Why it exists: a recipe tuned on one generator can learn that generator's habits (the answer of "Where was X
born?" always follows "was born in"). This world is where a recipe shows it holds on documents it was not tuned
on. It is never part of the default run: `config/second_world.yaml` points the workflow at it.

Questions ask in other words than the documents say ("Which instrument does X play?" / "X has played the cello
since childhood."), and two-hop questions chain other relations (album -> band -> town, band -> musician ->
instrument, venue -> town -> river).

    python -m nanochat.data.synthetic --world music --output data/music --seed 1 --n_entities 900
"""
from __future__ import annotations

import random

SYLLABLES = ["ae", "bri", "cor", "dax", "eli", "fyn", "gwe", "hoa", "ira", "jul", "kae", "lio", "mau", "nye",
             "oro", "pim", "quil", "rho", "sia", "tey", "uma", "vel", "wyn", "xan", "yse", "zef", "ash", "bel",
             "cyr", "dov"]
INSTRUMENTS = ["cello", "trumpet", "harp", "drums", "banjo", "violin", "oboe", "accordion", "saxophone", "flute"]
GENRES = ["jazz", "folk", "punk", "reggae", "techno", "blues", "opera", "swing", "gospel", "ska"]
RIVERS = ["Amberflow", "Coldwater", "Greywash", "Longmere", "Silverrun", "Stillbeck", "Whitewater", "Redmarsh"]
DISHES = ["eel pie", "plum bread", "fish stew", "onion soup", "honey cake", "smoked trout"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
BAND_WORDS = ["Lanterns", "Owls", "Engines", "Sparrows", "Tides", "Machines", "Ghosts", "Orchards"]
VENUE_WORDS = ["Hall", "Cellar", "Pavilion", "Arena", "Loft"]

# share of each entity type in a split's world
TYPE_SHARES = {"town": 0.15, "musician": 0.3, "band": 0.2, "album": 0.25, "venue": 0.1}
TITLES = {"town": "{name}", "musician": "{name}", "band": "{name}", "album": "{name} (album)", "venue": "{name}"}


def _year(rng: random.Random) -> str:
    return str(rng.randint(1950, 2024))


def make_split_world(rng: random.Random, names, n: int) -> dict:
    """Entities of one split, linked only to entities of the same split."""
    counts = {t: max(2, round(n * s)) for t, s in TYPE_SHARES.items()}
    towns = [{"name": names.word(2, 3), "river": rng.choice(RIVERS), "dish": rng.choice(DISHES),
              "founded": _year(rng)} for _ in range(counts["town"])]
    town_names = [t["name"] for t in towns]
    musicians = [{"name": f"{names.word(1, 2)} {names.word(2, 3)}",
                  "instrument": rng.choice(INSTRUMENTS), "town": rng.choice(town_names),
                  "debut": _year(rng)} for _ in range(counts["musician"])]
    bands = [{"name": f"The {names.word(2, 2)} {rng.choice(BAND_WORDS)}", "genre": rng.choice(GENRES),
              "leader": rng.choice(musicians)["name"], "base": rng.choice(town_names), "formed": _year(rng)}
             for _ in range(counts["band"])]
    albums = [{"name": names.word(2, 3), "band": rng.choice(bands)["name"], "year": _year(rng),
               "tracks": str(rng.randint(6, 19))} for _ in range(counts["album"])]
    venues = [{"name": f"{names.word(2, 2)} {rng.choice(VENUE_WORDS)}", "town": rng.choice(town_names),
               "night": rng.choice(WEEKDAYS), "seats": f"{rng.randint(2, 60) * 50}"} for _ in range(counts["venue"])]
    return {"town": towns, "musician": musicians, "band": bands, "album": albums, "venue": venues}


def _other(rng, pool, avoid):
    choices = [x for x in pool if x != avoid]
    return rng.choice(choices) if choices else avoid


def sentences(kind: str, e: dict, rng: random.Random, world: dict) -> list[str]:
    """Fact sentences (answers live here) and look-alike distractors, in a seeded order."""
    towns = [t["name"] for t in world["town"]]
    n = e["name"]
    if kind == "musician":
        short = n.split()[0]
        facts = [f"{n} has played the {e['instrument']} since childhood.",
                 f"{short} grew up in the river town of {e['town']}.",
                 f"Her first record appeared in {e['debut']}." if rng.random() < 0.5 else
                 f"His first record appeared in {e['debut']}."]
        other = _other(rng, INSTRUMENTS, e["instrument"])
        noise = [f"Critics once compared {short} to {'an' if other[0] in 'aeiou' else 'a'} {other} player from "
                 f"{_other(rng, towns, e['town'])}.",
                 f"On tour, {short} collects postcards and old maps."]
    elif kind == "band":
        facts = [f"{n} play mostly {e['genre']}.", f"The group was put together by {e['leader']}.",
                 f"{n} rehearse in a warehouse in {e['base']}.", f"{n} got together in {e['formed']}."]
        noise = [f"Their {_year(rng)} tour skipped {_other(rng, towns, e['base'])} entirely.",
                 f"Fans of {rng.choice(GENRES)} sometimes mistake them for another band."]
    elif kind == "album":
        facts = [f"{n} is a record by {e['band']}.", f"{n} was pressed in {e['year']}.",
                 f"It holds {e['tracks']} tracks."]
        noise = [f"A deluxe edition followed in {_year(rng)}.",
                 f"The sleeve shows a {rng.choice(['fox', 'lighthouse', 'staircase', 'kite'])} at night."]
    elif kind == "venue":
        facts = [f"{n} is a concert room in {e['town']}.", f"Open-mic night at {n} is on {e['night']}.",
                 f"{n} seats {e['seats']} people."]
        noise = [f"Before {_year(rng)} the building was a {rng.choice(['bakery', 'garage', 'chapel', 'bank'])}.",
                 f"Buses from {_other(rng, towns, e['town'])} stop right outside."]
    else:  # town
        facts = [f"{n} lies on the {e['river']} river.", f"Locals in {n} are proud of their {e['dish']}.",
                 f"{n} received its charter in {e['founded']}."]
        noise = [f"The {_other(rng, RIVERS, e['river'])} river floods the valley south of it every spring.",
                 f"Its market runs every {rng.choice(WEEKDAYS)}."]
    out = facts + noise
    rng.shuffle(out)
    return out


def questions(world: dict, doc_of: dict) -> list[dict]:
    """(template id, question, answer, gold documents in hop order) for every entity."""
    bands = {b["name"]: b for b in world["band"]}
    musicians = {m["name"]: m for m in world["musician"]}
    towns = {t["name"]: t for t in world["town"]}
    out = []

    def add(template, question, answer, entity, keys):
        out.append({"question": question, "answers": [answer], "doc_ids": [doc_of[k] for k in keys],
                    "hops": len(keys), "entity": entity, "template": template})

    for m in world["musician"]:
        n = m["name"]
        add("musician_instrument", f"Which instrument does {n} play?", m["instrument"], n, [("musician", n)])
        add("musician_town", f"Name the town {n} grew up in.", m["town"], n, [("musician", n)])
        add("musician_debut", f"When did {n} release a first record?", m["debut"], n, [("musician", n)])
    for b in world["band"]:
        n, lead = b["name"], b["leader"]
        add("band_genre", f"What kind of music do {n} play?", b["genre"], n, [("band", n)])
        add("band_leader", f"Who put {n} together?", lead, n, [("band", n)])
        add("band_base", f"Where do {n} rehearse?", b["base"], n, [("band", n)])
        add("leader_instrument", f"What instrument is played by the musician who put {n} together?",
            musicians[lead]["instrument"], n, [("band", n), ("musician", lead)])
        add("base_river", f"Which river flows past the town where {n} rehearse?", towns[b["base"]]["river"], n,
            [("band", n), ("town", b["base"])])
    for a in world["album"]:
        n, band = a["name"], a["band"]
        add("album_band", f"Which band made the record {n}?", band, n, [("album", n)])
        add("album_year", f"What year was {n} pressed?", a["year"], n, [("album", n)])
        add("album_genre", f"What kind of music is on the record {n}?", bands[band]["genre"], n,
            [("album", n), ("band", band)])
    for v in world["venue"]:
        n = v["name"]
        add("venue_town", f"In what town is the concert room {n}?", v["town"], n, [("venue", n)])
        add("venue_night", f"On what day is open-mic night at {n}?", v["night"], n, [("venue", n)])
        add("venue_dish", f"What food is the town of {n} proud of?", towns[v["town"]]["dish"], n,
            [("venue", n), ("town", v["town"])])
    for t in world["town"]:
        n = t["name"]
        add("town_river", f"Along which river is {n}?", t["river"], n, [("town", n)])
        add("town_charter", f"When did {n} get its charter?", t["founded"], n, [("town", n)])
    return out
