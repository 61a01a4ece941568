"""A seeded fictional world for RAG experiments that a tiny model can learn in minutes.

Every named thing (person, company, city, product, country) is invented from syllables,
so no pretrained knowledge helps: the only way to answer is to copy the answer span from
a retrieved document. Design choices that make copying learnable:

- one short document (~40-70 words) per entity: attribute sentences plus distractor
  sentences that mention other years/cities, so the model has to pick the right sentence;
- few, regular question templates whose key phrase ("was founded in", "is headquartered in")
  appears literally in the sentence holding the answer;
- short answers (names, years, colours, one-word professions);
- splits are separate sub-worlds: val/test questions are about entities that never appear in
  any training question or answer (only shared vocabularies such as years or colours repeat).

Two-hop questions ("In which city was the founder of X born?") need the company document and
then the person document; their doc_ids list both, in hop order.

    python -m nanochat.data.synthetic --output data/synth --seed 0 --n_entities 2000
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nanochat.cli import ArgumentParser, output_dir
from nanochat.data import synthetic_music as music
from nanochat.common import atomic_write_json, sha256_file, print0
from nanochat.data.jsonl import write_jsonl

SYLLABLES = ["zor", "vik", "bel", "tra", "mon", "qua", "rin", "dal", "fen", "gor", "lux", "nim", "pax", "sel",
             "tov", "wex", "yar", "kel", "bro", "dun", "esk", "fal", "hil", "jor", "kas", "lom", "mir", "nov",
             "ost", "pel", "rud", "sav", "tal", "ulm", "vor", "zan", "cal", "dre", "gil", "hab"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "silver", "black", "white", "brown"]
PROFESSIONS = ["baker", "pilot", "chemist", "teacher", "architect", "farmer", "painter", "surgeon", "sailor",
               "engineer", "librarian", "carpenter"]
LANDMARKS = ["castle", "harbour", "bridges", "markets", "gardens", "museums", "cathedral", "vineyards"]
COMPANY_SUFFIXES = ["Labs", "Works", "Systems", "Industries", "Motors", "Foods"]
PRODUCT_KINDS = ["kettle", "drone", "lamp", "bicycle", "phone", "camera", "guitar", "tractor"]
MONTHS = ["January", "March", "May", "July", "September", "November"]

# share of each entity type in a split's world
TYPE_SHARES = {"city": 0.2, "person": 0.35, "company": 0.25, "product": 0.2}


class NameGenerator:
    """Distinct capitalised pseudo-words; never reused across the whole world (all splits)."""

    def __init__(self, rng: random.Random, syllables: list[str] = SYLLABLES):
        self.rng, self.used, self.syllables = rng, set(), syllables

    def word(self, min_syll: int = 2, max_syll: int = 3) -> str:
        for _ in range(10_000):
            n = self.rng.randint(min_syll, max_syll)
            w = "".join(self.rng.choice(self.syllables) for _ in range(n)).capitalize()
            if w not in self.used:
                self.used.add(w)
                return w
        raise RuntimeError("name space exhausted: lower n_entities or add syllables")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _year(rng: random.Random) -> str:
    return str(rng.randint(1900, 2020))


def _make_split_world(rng: random.Random, names: NameGenerator, n: int) -> dict:
    """Entities of one split, linked only to entities of the same split."""
    counts = {t: max(2, round(n * s)) for t, s in TYPE_SHARES.items()}
    countries = [names.word(2, 2) + rng.choice(["ia", "land", "stan"]) for _ in range(max(2, counts["city"] // 6))]
    cities = [{"name": names.word(), "country": rng.choice(countries), "landmark": rng.choice(LANDMARKS),
               "population": f"{rng.randint(2, 900)},000"} for _ in range(counts["city"])]
    city_names = [c["name"] for c in cities]
    persons = [{"name": f"{names.word(2, 2)} {names.word()}", "city": rng.choice(city_names),
                "year": _year(rng), "profession": rng.choice(PROFESSIONS)} for _ in range(counts["person"])]
    companies = [{"name": f"{names.word()} {rng.choice(COMPANY_SUFFIXES)}", "year": _year(rng),
                  "founder": rng.choice(persons)["name"], "hq": rng.choice(city_names)}
                 for _ in range(counts["company"])]
    products = [{"name": f"{names.word()} {rng.choice(PRODUCT_KINDS)}", "colour": rng.choice(COLOURS),
                 "maker": rng.choice(companies)["name"], "year": _year(rng)} for _ in range(counts["product"])]
    return {"city": cities, "person": persons, "company": companies, "product": products}


# -----------------------------------------------------------------------------
# Documents: attribute sentences (answers live here) + distractors (same shapes, other values)

def _other(rng, pool, avoid):
    choices = [x for x in pool if x != avoid]
    return rng.choice(choices) if choices else avoid


def _sentences(kind: str, e: dict, rng: random.Random, world: dict) -> list[str]:
    cities = [c["name"] for c in world["city"]]
    n = e["name"]
    if kind == "person":
        first = n.split()[0]
        facts = [f"{n} was born in {e['city']}.", f"The birth year of {n} is {e['year']}.",
                 f"{n} works as {_article(e['profession'])} {e['profession']}."]
        noise = [f"In {_year(rng)}, {first} spent a long summer travelling around {_other(rng, cities, e['city'])}.",
                 f"Friends describe {first} as patient, curious and fond of {rng.choice(MONTHS)} evenings."]
    elif kind == "company":
        facts = [f"{n} was founded in {e['year']}.", f"{n} was founded by {e['founder']}.",
                 f"{n} is headquartered in {e['hq']}."]
        noise = [f"In {_year(rng)} the firm opened a second office in {_other(rng, cities, e['hq'])}.",
                 f"Today it employs about {rng.randint(20, 900)} people and its logo is a {rng.choice(COLOURS)} circle."]
    elif kind == "product":
        facts = [f"The {n} is made by {e['maker']}.", f"The {n} was released in {e['year']}.",
                 f"The colour of the {n} is {e['colour']}."]
        noise = [f"A cheaper version of it appeared in shops in {_year(rng)}.",
                 f"Reviewers praised its {rng.choice(['battery', 'handle', 'design', 'price'])} and its "
                 f"{rng.choice(COLOURS)} packaging."]
    else:  # city
        facts = [f"{n} is a city in {e['country']}.", f"{n} is known for its {e['landmark']}.",
                 f"{n} has about {e['population']} inhabitants."]
        noise = [f"A music festival is held there every {rng.choice(MONTHS)} since {_year(rng)}.",
                 f"Many visitors arrive by train from {_other(rng, cities, n)}."]
    # distractors between facts, fixed slots: regular layout helps a tiny model
    return [facts[0], noise[0], facts[1], facts[2], noise[1]]


# -----------------------------------------------------------------------------
# Questions: (template id, question, answer, entity keys in hop order)

def _questions(world: dict, doc_of: dict) -> list[dict]:
    comp = {c["name"]: c for c in world["company"]}
    pers = {p["name"]: p for p in world["person"]}
    city = {c["name"]: c for c in world["city"]}
    out = []

    def add(template, question, answer, entity, keys):
        out.append({"question": question, "answers": [answer], "doc_ids": [doc_of[k] for k in keys],
                    "hops": len(keys), "entity": entity, "template": template})

    for p in world["person"]:
        n = p["name"]
        add("person_city", f"Where was {n} born?", p["city"], n, [("person", n)])
        add("person_year", f"What is the birth year of {n}?", p["year"], n, [("person", n)])
        add("person_job", f"What does {n} work as?", p["profession"], n, [("person", n)])
    for c in world["company"]:
        n, f = c["name"], c["founder"]
        add("company_year", f"In which year was {n} founded?", c["year"], n, [("company", n)])
        add("company_founder", f"Who founded {n}?", f, n, [("company", n)])
        add("company_hq", f"Where is {n} headquartered?", c["hq"], n, [("company", n)])
        add("founder_city", f"In which city was the founder of {n} born?", pers[f]["city"], n,
            [("company", n), ("person", f)])
        add("hq_country", f"In which country is {n} headquartered?", city[c["hq"]]["country"], n,
            [("company", n), ("city", c["hq"])])
    for p in world["product"]:
        n, m = p["name"], p["maker"]
        add("product_maker", f"Which company made the {n}?", m, n, [("product", n)])
        add("product_year", f"In which year was the {n} released?", p["year"], n, [("product", n)])
        add("product_colour", f"What is the colour of the {n}?", p["colour"], n, [("product", n)])
        add("maker_year", f"In which year was the maker of the {n} founded?", comp[m]["year"], n,
            [("product", n), ("company", m)])
    for c in world["city"]:
        n = c["name"]
        add("city_country", f"Which country is {n} a city in?", c["country"], n, [("city", n)])
        add("city_landmark", f"What is {n} known for?", c["landmark"], n, [("city", n)])
    return out


@dataclass(frozen=True)
class World:
    """One generator of fictional worlds: its name syllables, entity types (with their share and document title
    pattern), and the functions that make a split's entities, an entity's sentences and a split's questions."""
    syllables: list[str]
    type_shares: dict[str, float]
    titles: dict[str, str]
    make_split_world: Callable
    sentences: Callable
    questions: Callable


# The registry of generators (CLI choices and the config schema's synthetic.world enum come from its keys).
WORLDS: dict[str, World] = {
    # the bundled example (default run): people, companies, products, cities
    "companies": World(SYLLABLES, TYPE_SHARES, {"product": "The {name}"}, _make_split_world, _sentences, _questions),
    # the second world (config/second_world.yaml): musicians, bands, albums, venues, towns
    "music": World(music.SYLLABLES, music.TYPE_SHARES, music.TITLES, music.make_split_world, music.sentences,
                   music.questions),
}


def generate_world(output_dir, seed: int = 0, n_entities: int = 2000, val_fraction: float = 0.1,
                   test_fraction: float = 0.1, two_hop: bool = True, world: str = "companies") -> dict:
    """Write documents.jsonl, queries_{train,val,test}.jsonl and manifest.json; return the manifest."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; expected one of {', '.join(WORLDS)}")
    spec = WORLDS[world]
    if n_entities < 30:
        raise ValueError(f"n_entities={n_entities} is too small: need at least 30 for three non-empty splits")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each in (0,1), sum < 1")
    rng = random.Random(seed)
    names = NameGenerator(rng, spec.syllables)
    sizes = {"val": round(n_entities * val_fraction), "test": round(n_entities * test_fraction)}
    sizes["train"] = n_entities - sizes["val"] - sizes["test"]
    documents, queries = [], {}
    for split in ("train", "val", "test"):
        entities = spec.make_split_world(rng, names, sizes[split])
        doc_of = {}
        for kind in spec.type_shares:
            for e in entities[kind]:
                doc_id = f"{kind}-{len(documents):05d}"
                doc_of[(kind, e["name"])] = doc_id
                title = spec.titles.get(kind, "{name}").format(name=e["name"])
                documents.append({"id": doc_id, "title": title,
                                  "content": " ".join(spec.sentences(kind, e, rng, entities)),
                                  "source": f"synthetic:{kind}"})
        rows = [q for q in spec.questions(entities, doc_of) if two_hop or q["hops"] == 1]
        rng.shuffle(rows)
        for i, q in enumerate(rows):
            q["id"] = f"{split}-{i:05d}"
        queries[split] = [{"id": q.pop("id"), **q} for q in rows]
    rng.shuffle(documents)  # interleave splits in the KB so position carries no information

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "documents.jsonl", documents)
    for split, rows in queries.items():
        write_jsonl(out / f"queries_{split}.jsonl", rows)
    manifest = {
        "generator": "nanochat.data.synthetic", **({"world": world} if world != "companies" else {}),
        "seed": seed, "n_entities": n_entities,
        "val_fraction": val_fraction, "test_fraction": test_fraction, "two_hop": two_hop,
        "n_documents": len(documents),
        "n_queries": {s: len(r) for s, r in queries.items()},
        "n_two_hop": {s: sum(q["hops"] == 2 for q in r) for s, r in queries.items()},
        "sha256": {p.name: sha256_file(p) for p in sorted(out.glob("*.jsonl"))
                   if p.name == "documents.jsonl" or p.name.startswith("queries_")},
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Generate a seeded fictional world (documents + single/two-hop questions).")
    p.add_argument("--output", type=output_dir, required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    p.add_argument("--n_entities", type=int, default=2000, help="named entities = documents (one each)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="share of entities in the val world")
    p.add_argument("--test_fraction", type=float, default=0.1, help="share of entities in the test world")
    p.add_bool("--two_hop", default=True, help="include two-hop questions")
    p.add_argument("--world", default="companies", choices=list(WORLDS),
                   help="generator: companies (the bundled example) or music (the second world, other entity "
                        "types, templates and phrasing)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    m = generate_world(args.output, seed=args.seed, n_entities=args.n_entities, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, two_hop=args.two_hop, world=args.world)
    print0(f"wrote {m['n_documents']} documents and queries {m['n_queries']} to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
