//! DevBench tasks (Tan et al. 2024) as BabyLM ships them: a task folder with a
//! `manifest.csv` of trials, columns `text1` and `image1`, `image2`, ... (relative
//! paths, `image1` the right picture). Each trial becomes a picture-choice record
//! (`text`, `images`); tasks without text (`sem-things`) are not choice tasks.

use serde_json::{Value, json};

/// The file name that marks a DevBench task folder.
pub const MANIFEST: &str = "manifest.csv";

/// Picture-choice records from a manifest's text.
pub fn records(csv: &str) -> Result<Vec<Value>, String> {
    let mut rows = parse_csv(csv).into_iter();
    let header = rows.next().ok_or("an empty manifest")?;
    let column = |name: &str| header.iter().position(|h| h.trim() == name);
    let text = column("text1").ok_or("no `text1` column: not a picture-choice task")?;
    let images: Vec<usize> = (1..).map_while(|k| column(&format!("image{k}"))).collect();
    if images.len() < 2 {
        return Err("fewer than two `imageN` columns".into());
    }
    Ok(rows
        .filter(|row| row.iter().any(|cell| !cell.trim().is_empty()))
        .map(|row| {
            let cell = |i: usize| row.get(i).cloned().unwrap_or_default();
            let pictures: Vec<String> = images.iter().map(|&i| cell(i)).collect();
            json!({"text": cell(text), "images": pictures})
        })
        .collect())
}

/// RFC 4180 CSV: quoted fields may hold commas, newlines and doubled quotes.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            ('\r', false) => {}
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_become_picture_choices_right_picture_first() {
        let csv = "trial,text1,image1,image2,image3,image4\r\n\
                   1,\"the cat, not the dog\",a/cat.png,a/dog.png,a/cow.png,a/hen.png\r\n\
                   2,\"say \"\"hi\"\"\",b.png,c.png,d.png,e.png\r\n";
        let trials = records(csv).unwrap();
        assert_eq!(trials.len(), 2);
        assert_eq!(trials[0]["text"], "the cat, not the dog");
        assert_eq!(trials[0]["images"][0], "a/cat.png");
        assert_eq!(trials[0]["images"].as_array().unwrap().len(), 4);
        assert_eq!(trials[1]["text"], "say \"hi\"");
        assert!(records("image1,image2\nx.png,y.png\n").is_err());
    }
}
