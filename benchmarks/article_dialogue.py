"""Reference: the article's dialogue cleaner (section "2、多进程及通信完成数据清洗和保存"), ported.

The code below is the article's ``save_mmi_train_data`` / ``save_mmi_val_data`` /
``get_funtine_data`` / ``save_funtine_data``, kept as written, with only these changes:

- Hard-coded paths (``../data/...``) become ``paths`` and ``out_dir`` arguments; the MMI writers
  take their file's path as a second argument.
- ``train_test_split`` (sklearn, not installed here) is replaced by its exact equivalent for a
  float ``test_size`` and ``random_state=1``: ``n_test = ceil(test_size * n)``,
  ``perm = numpy.random.RandomState(1).permutation(n)``, test ``perm[:n_test]``, train
  ``perm[n_test:]``. The article's ``10000`` validation conversations become ``val_size`` (a
  count, divided by ``len(all_groups)`` as there, or a fraction); ``val_size=0`` skips the split.
- ``punctuations``, never defined in the article, is the one of ``mpkit.recipes`` (ASCII
  punctuation plus full-width Chinese marks), copied here.
- The system messages (the article's ``sysInfo_list``, dropped in its section 1 before this step)
  are dropped right after reading, as whole contents.
- ``str(content)`` where a number stored as a number would crash ``content.replace``.
- tqdm bars and prints are left out.

``get_funtine_data(paths, out_dir, val_size)``; run alone: ``python benchmarks/article_dialogue.py
OUT_DIR FILE...``.
"""
# The article's own code, kept as written (a write per line in the MMI writers):
# ruff: noqa: FURB122
import math
import os
import string
import sys
from multiprocessing import Process, Queue

import emoji
import numpy as np
import pandas as pd

punctuations = string.punctuation + "，。！？；：、…“”‘’（）《》【】〈〉「」『』～·—"
sysInfo_list = ['我通过了好友请求,现在你俩可以开始聊天了', '我通过了你的朋友验证请求,现在我们可以开始聊天了',
                '已通过你的朋友验证请求,现在可以开始聊天了', '不支持此消息,请在手机上查看', '微信红包']


def train_test_split(groups, test_size, random_state):
    n = len(groups)
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"test_size={test_size} leaves an empty split of {n} groups")
    permutation = np.random.RandomState(random_state).permutation(n)
    return [groups[i] for i in permutation[n_test:n_test + n_train]], [groups[i] for i in permutation[:n_test]]


def save_mmi_train_data(queue, path):
    with open(path, 'w', encoding='utf-8') as f:
        while True:
            save_list = queue.get()
            if len(save_list) == 0:
                break
            for line in save_list:
                f.write(line)


def save_mmi_val_data(queue, path):
    with open(path, 'w', encoding='utf-8') as f:
        while True:
            save_list = queue.get()
            if len(save_list) == 0:
                break
            for line in save_list:
                f.write(line)


def get_funtine_data(paths, out_dir, val_size=10000):
    all_groups = []
    for path in paths:
        df = pd.read_excel(path, engine='openpyxl')
        df = df.dropna()
        df = df.drop_duplicates(keep='first')
        df = df[~df['消息内容'].isin(sysInfo_list)]
        groups = list(df.groupby(by=['坐席id', '客户微信id']))
        all_groups.extend(groups)
    if val_size == 0:
        train, val = all_groups, []
    else:
        test_size = val_size / len(all_groups) if isinstance(val_size, int) else val_size
        train, val = train_test_split(all_groups, test_size=test_size, random_state=1)
    for sub in ('finetune_std_data', 'finetune_mmi_data'):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    train_std_path = os.path.join(out_dir, 'finetune_std_data', 'train.txt')
    val_std_path = os.path.join(out_dir, 'finetune_std_data', 'val.txt')
    train_mmi_queue = Queue()
    save_funtine_data(train, train_std_path, train_mmi_queue, save_mmi_train_data,
                      os.path.join(out_dir, 'finetune_mmi_data', 'train.txt'))
    val_mmi_queue = Queue()
    save_funtine_data(val, val_std_path, val_mmi_queue, save_mmi_val_data,
                      os.path.join(out_dir, 'finetune_mmi_data', 'val.txt'))
    return len(train), len(val)


def save_funtine_data(groups, save_std_path, queue, fun, mmi_path):
    p = Process(target=fun, args=(queue, mmi_path))
    p.start()
    with open(save_std_path, 'w', encoding='utf-8') as f:
        for group in groups:
            new_df = group[1]
            df_roles = new_df['是否客服'].values.tolist()
            df_contents = new_df['消息内容'].values.tolist()
            roles = []
            contents = []
            for role, content in zip(df_roles, df_contents):
                content = str(content).replace('\n', '')
                content = emoji.replace_emoji(content, '')
                if len(content) > 0 and content != "":
                    roles.append(role)
                    contents.append(content)
            save_list = []
            save_str = ""
            for index, role in enumerate(roles):
                content = contents[index].replace('\n', '')
                content = emoji.replace_emoji(content, '')
                if content[-1] not in punctuations:
                    content += ';'
                if index == 0:
                    if role == "是":
                        save_str += "坐席:" + content
                    else:
                        save_str += "客户:" + content
                else:
                    if role != roles[index - 1]:
                        f.write(save_str[0:-1] + '\n')
                        save_list.append(save_str[0:-1] + '\n')
                        if role == "是":
                            save_str = "坐席:" + content
                        else:
                            save_str = "客户:" + content
                    else:
                        save_str += content
            if len(save_str) > 1:
                save_list.append(save_str[0:-1] + '\n')
                f.write(save_str[0:-1] + '\n')
            f.write('\n')
            # 切片反转
            save_list = save_list[::-1]
            save_list.append('\n')
            if len(save_list) > 0:
                queue.put(save_list)
    # 注意传入一个空值,让倒序进程结束
    queue.put([])
    p.join()


if __name__ == '__main__':
    print(get_funtine_data(sys.argv[2:], sys.argv[1], val_size=0.1))
