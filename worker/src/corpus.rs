//! The embedded default text: a seeded, procedural corpus of child-directed speech about
//! a small world of things with colours, sizes, counts and places.
//!
//! It is generated, not copied: the same seed gives the same text on every machine, so
//! a job that names `generated_text` is reproducible and needs no download. Utterances
//! mimic what caregivers say to toddlers (naming, questions, praise, simple relations),
//! which is what the first phase of the curriculum learns from.

use crate::rng::Rng;

pub const OBJECTS: &[&str] = &[
    "ball", "cup", "dog", "cat", "block", "duck", "car", "hat", "book", "spoon", "shoe", "bear",
    "fish", "bird", "truck", "apple", "box", "star", "boat", "sock",
];
pub const COLOURS: &[&str] = &[
    "red", "blue", "green", "yellow", "pink", "purple", "orange", "brown", "black", "white",
];
pub const SIZES: &[&str] = &["big", "little", "tiny", "huge"];
pub const PLACES: &[&str] = &[
    "on the table",
    "under the bed",
    "in the box",
    "next to the chair",
    "on the floor",
    "in the bath",
    "behind the door",
    "near the window",
];
const PEOPLE: &[&str] = &[
    "mommy",
    "daddy",
    "grandma",
    "your sister",
    "the baby",
    "teddy",
];
const VERBS: &[(&str, &str)] = &[
    ("throw", "threw"),
    ("find", "found"),
    ("hold", "held"),
    ("push", "pushed"),
    ("hide", "hid"),
    ("catch", "caught"),
    ("wash", "washed"),
    ("drop", "dropped"),
];
const NUMBERS: &[&str] = &["two", "three", "four", "five"];
const PRAISE: &[&str] = &[
    "good job!",
    "that's right!",
    "well done!",
    "yes, you did it!",
    "clever girl!",
    "clever boy!",
];

/// One thing in the world, as words.
struct Thing {
    colour: &'static str,
    size: &'static str,
    object: &'static str,
}

fn plural(object: &str) -> String {
    match object {
        "fish" => "fish".into(),
        "box" => "boxes".into(),
        o => format!("{o}s"),
    }
}

fn thing(rng: &mut Rng) -> Thing {
    Thing {
        colour: rng.pick(COLOURS),
        size: rng.pick(SIZES),
        object: rng.pick(OBJECTS),
    }
}

/// One utterance a caregiver might say.
fn utterance(rng: &mut Rng) -> String {
    let t = thing(rng);
    let (o, c, s) = (t.object, t.colour, t.size);
    let place = rng.pick(PLACES);
    let who = rng.pick(PEOPLE);
    let (verb, past) = rng.pick(VERBS);
    let n = rng.pick(NUMBERS);
    match rng.below(16) {
        0 => format!("look at the {c} {o}!"),
        1 => format!("where is the {s} {o}?"),
        2 => format!("the {o} is {place}."),
        3 => format!("can you find the {c} {o}?"),
        4 => format!("yes, that's a {s} {c} {o}."),
        5 => format!("{who} has the {c} {o}."),
        6 => format!("can you {verb} the {o}?"),
        7 => format!("you {past} the {s} {o}! {}", rng.pick(PRAISE)),
        8 => format!("how many {} are there? {n} {}!", plural(o), plural(o)),
        9 => format!("is the {o} {c}? no, it's {}.", rng.pick(COLOURS)),
        10 => format!("what colour is the {o}? it's {c}."),
        11 => format!("the {s} {o} is next to the {}.", rng.pick(OBJECTS)),
        12 => format!("let's put the {o} {place}."),
        13 => format!("oh no, the {o} fell down!"),
        14 => format!("{who} wants the {s} {o}. can you give it to {who}?"),
        _ => format!("there are {n} {c} {} {place}.", plural(o)),
    }
}

/// About `words` words of child-directed speech, one short exchange per line.
pub fn generate(seed: u64, words: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::new();
    let mut count = 0;
    while count < words {
        let turns = 1 + rng.below(4);
        let line: Vec<String> = (0..turns).map(|_| utterance(&mut rng)).collect();
        let line = line.join(" ");
        count += line.split_whitespace().count() as u64;
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_text() {
        assert_eq!(generate(7, 2_000), generate(7, 2_000));
        assert_ne!(generate(7, 2_000), generate(8, 2_000));
    }

    #[test]
    fn it_generates_about_the_words_asked_for() {
        let words = generate(1, 10_000).split_whitespace().count();
        assert!((10_000..10_100).contains(&words), "{words}");
    }
}
